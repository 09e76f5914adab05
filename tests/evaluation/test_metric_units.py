"""One unit per metric (issue 21): decoded-text metrics are fractions in [0, 1] like token
accuracy and MFU, checked against reference implementations, and curves.png plots the decoded
metrics whenever the run logged them."""

import numpy as np
import sacrebleu
from matplotlib import image as mpimg
from sklearn.metrics import accuracy_score

from t5x_like.evaluation import metrics
from t5x_like.tools import plotting
from t5x_like.training.metrics_writer import MetricsWriter

PREDICTIONS = ["the cat sat on the mat", "A dog.", "return the list", "class", "  function "]
REFERENCES = ["the cat sat on the mat", "a dog", "return a list", "module", "function"]


def test_text_metrics_are_fractions_matching_the_references():
    scores = metrics.text_metrics(PREDICTIONS, REFERENCES)
    stripped = [p.strip() for p in PREDICTIONS], [r.strip() for r in REFERENCES]
    assert scores["accuracy"] == accuracy_score(stripped[1], stripped[0]) == 2 / 5
    normalized = [[metrics.normalize_answer(t) for t in ts] for ts in (REFERENCES, PREDICTIONS)]
    assert scores["exact_match"] == accuracy_score(*normalized) == 4 / 5
    bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert 1 < bleu < 100  # sacrebleu's own scale is percent ...
    assert scores["bleu"] == bleu / 100  # ... ours the fraction.
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def _write_finetune_run(workdir: str, decoded: bool) -> str:
    writer = MetricsWriter(workdir, enabled=True)
    for step in (0, 2, 4):
        record = {"loss": 5.0 - step, "accuracy": 0.1 + 0.1 * step}
        if decoded:
            record.update(decode_accuracy=0.05 * step, decode_exact_match=0.04 * step)
            record.update(decode_bleu=0.02 * step, decode_examples=8.0)
        writer.write(step, "eval", record)
        writer.write(step + 1, "train", {"loss": 5.0 - step, "accuracy": 0.1 * step})
    writer.close()
    return workdir


def test_curves_show_the_decoded_metrics_when_the_run_computed_them(tmp_path):
    finetune = _write_finetune_run(str(tmp_path / "finetune"), decoded=True)
    assert plotting.run_metrics(finetune) == (
        "loss",
        "accuracy",
        "decode_accuracy",
        "decode_exact_match",
        "decode_bleu",
    )
    image = mpimg.imread(plotting.write_training_curves(finetune))
    width, height = plotting.PANEL_SIZE
    assert image.shape[:2] == (height * plotting.DPI, 5 * width * plotting.DPI)
    assert np.isfinite(image).all()

    pretrain = _write_finetune_run(str(tmp_path / "pretrain"), decoded=False)
    assert plotting.run_metrics(pretrain) == ("loss", "accuracy")
    image = mpimg.imread(plotting.write_training_curves(pretrain))
    assert image.shape[:2] == (height * plotting.DPI, 2 * width * plotting.DPI)
