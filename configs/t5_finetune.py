r"""Fine-tuning a pretrained T5 on local text-to-text tasks built from CPython's docstrings.

    --config=configs/t5_finetune.py:summarize   body of a docstring -> its summary sentence
    --config=configs/t5_finetune.py:classify    docstring -> its kind (module, class, function,
                                                method, topic): classification as text
    --config=configs/t5_finetune.py:classify,small   the same on another size of configs/t5.py

Point `--config.train.init_from` at a pretraining workdir (configs/t5.py, same size): its params
are loaded, its optimizer state is not. Evaluation greedily decodes `train.decode_batches`
batches and reports accuracy, exact match and BLEU of the decoded text (in the log,
metrics.jsonl and `<workdir>/decodes/step_<N>.jsonl`).
"""

import os

from ml_collections import config_dict

from t5x_like import config

# (inputs feature, targets feature, prefix, inputs_len, targets_len) of t5x_like_docstrings.
TASKS = {
    "summarize": ("body", "summary", "summarize: ", 128, 32),
    "classify": ("text", "kind", "classify: ", 128, 4),
}


def get_config(arg: str = "summarize") -> config_dict.ConfigDict:
    task, _, size = arg.partition(",")
    inputs_key, targets_key, prefix, inputs_len, targets_len = config.preset(TASKS, task, "task")
    c = config.load_file(os.path.join(os.path.dirname(__file__), "t5.py"), size or "tiny")
    c.name = f"t5_{size or 'tiny'}_finetune_{task}"
    c.model.dropout_rate = 0.1  # T5's fine-tuning dropout.
    c.data.update(
        task="seq2seq",
        dataset="t5x_like_docstrings",
        vocab_dataset="t5x_like_corpus",  # The pretraining run's vocabulary.
        inputs_key=inputs_key,
        targets_key=targets_key,
        inputs_prefix=prefix,
        inputs_len=inputs_len,
        targets_len=targets_len,
    )
    c.train.update(
        steps=300,
        eval_every=100,
        eval_batches=0,  # The whole validation split.
        decode_batches=4,
        checkpoint_every=100,
    )
    c.optimizer.update(learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0)
    return c
