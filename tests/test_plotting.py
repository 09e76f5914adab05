"""Training curves and the report script: PNGs of the right size and a table of the last metrics."""

import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors
from matplotlib import image as mpimg
from testutil import REPO

from t5x_like.tools import plotting
from t5x_like.training.metrics_writer import MetricsWriter, read_metrics


def _write_run(workdir: str, scale: float) -> str:
    """Train steps 1..4 and eval at 0, 4; step 4 is logged twice, as after a resume."""
    writer = MetricsWriter(workdir, enabled=True)
    writer.write(0, "eval", {"loss": 5.0 * scale, "accuracy": 0.0})
    for step in range(1, 5):
        writer.write(step, "train", {"loss": scale * (5 - step), "accuracy": 0.1 * step})
    writer.write(4, "train", {"loss": scale * 0.5, "accuracy": 0.45})  # The resumed value wins.
    writer.write(4, "eval", {"loss": scale * 1.5, "accuracy": 0.375})
    writer.close()
    return workdir


@pytest.fixture
def runs(tmp_path):
    return [_write_run(str(tmp_path / "run_a"), 1.0), _write_run(str(tmp_path / "run_b"), 2.0)]


def _pixels_near(image: np.ndarray, color: str) -> int:
    """Pixels within a small distance of a matplotlib color (lines are antialiased)."""
    target = np.array(colors.to_rgb(color))
    return int((np.abs(image[..., :3] - target).max(axis=-1) < 0.08).sum())


def test_plot_curves_writes_a_png_with_one_panel_per_metric_and_a_line_per_run(runs, tmp_path):
    out = plotting.plot_curves(runs, str(tmp_path / "out" / "both.png"))
    image = mpimg.imread(out)
    width, height = plotting.PANEL_SIZE
    assert image.shape[:2] == (height * plotting.DPI, 2 * width * plotting.DPI)
    # Each run's color (C0, C1) is drawn; a third color (C2) is not.
    assert _pixels_near(image, "C0") > 200 and _pixels_near(image, "C1") > 200
    assert _pixels_near(image, "C2") == 0

    single = mpimg.imread(plotting.plot_curves(runs[:1], str(tmp_path / "one.png"), ["loss"]))
    assert single.shape[:2] == (height * plotting.DPI, width * plotting.DPI)
    assert _pixels_near(single, "C0") > 100 and _pixels_near(single, "C1") == 0


def test_write_training_curves_writes_curves_png_into_the_workdir(runs):
    path = plotting.write_training_curves(runs[0])
    assert path == os.path.join(runs[0], "curves.png")
    assert mpimg.imread(path).shape[1] == 2 * plotting.PANEL_SIZE[0] * plotting.DPI


def test_markdown_table_has_the_last_train_and_eval_metrics(runs):
    table = plotting.markdown_table(runs).splitlines()
    assert table == [
        "| run | train step | train loss | train accuracy "
        "| eval step | eval loss | eval accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| run_a | 4 | 0.5 | 0.45 | 4 | 1.5 | 0.375 |",
        "| run_b | 4 | 1 | 0.45 | 4 | 3 | 0.375 |",
    ]


def test_missing_empty_or_unplottable_metrics_are_clear_errors(runs, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match=r"empty/metrics.jsonl does not exist: pass the"):
        plotting.plot_curves([str(empty)], str(tmp_path / "x.png"))
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty/metrics.jsonl has no train or eval records"):
        plotting.write_training_curves(str(empty))
    (empty / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss"')  # Cut short.
    with pytest.raises(ValueError, match=r"empty/metrics.jsonl has no train or eval records"):
        plotting.markdown_table([str(empty)])
    with pytest.raises(ValueError, match=r"No run logged metric 'bleu'; choose among \['accu"):
        plotting.plot_curves(runs, str(tmp_path / "x.png"), ["loss", "bleu"])
    assert not (tmp_path / "x.png").exists()


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "report.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_report_script_plots_two_runs_and_prints_the_table(runs, tmp_path):
    out = tmp_path / "report.png"
    result = _report(f"--workdirs={runs[0]},{runs[1]}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "| run_b | 4 | 1 | 0.45 | 4 | 3 | 0.375 |" in result.stdout
    assert f"Wrote {out}" in result.stdout
    assert mpimg.imread(str(out)).shape[:2] == (400, 1000)

    result = _report(f"--workdirs={runs[0]}", f"--workdirs={runs[1]}")  # Several: --out needed.
    assert result.returncode != 0 and "Pass --out=<file.png>" in result.stderr
    result = _report(f"--workdirs={tmp_path / 'nowhere'}")
    assert result.returncode == 1 and "nowhere/metrics.jsonl does not exist" in result.stderr


def test_a_record_cut_short_by_a_killed_run_is_skipped_and_the_resumed_run_logs_after_it(
    tmp_path,
):
    workdir = str(tmp_path / "killed")
    writer = MetricsWriter(workdir, enabled=True)
    writer.write(1, "train", {"loss": 2.0})
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "split": "train", "lo')  # The kill, mid-write.
    writer = MetricsWriter(workdir, enabled=True)  # The relaunch.
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    assert {step: r["loss"] for step, r in read_metrics(workdir).items()} == {1: 2.0, 2: 1.5}
    assert "| killed | 2 | 1.5 |" in plotting.markdown_table([workdir])
