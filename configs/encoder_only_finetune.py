r"""Fine-tuning a pretrained encoder-only (BERT) model on the built-in labelled tasks.

    --config=configs/encoder_only_finetune.py:docstring_kind   classification (the default)
    --config=configs/encoder_only_finetune.py:same_document    sentence-pair classification
    --config=configs/encoder_only_finetune.py:code_tags        BIO token classification
    --config=configs/encoder_only_finetune.py:module_qa        extractive QA (SQuAD 2.0-style)
    --config=configs/encoder_only_finetune.py:docstring_kind,mini   on another BERT size
    --config=configs/encoder_only_finetune.py:docstring_kind,/tmp/bert_hf
                                    from an encoder-only workdir (e.g. convert_checkpoint.py
                                    --from_hf of a BERT / RoBERTa): its model and tokenizer

Point `--config.train.init_from` at a pretraining workdir of configs/encoder_only.py (same
size): its encoder and embeddings are loaded, the task's head starts fresh. Given a workdir
instead of a size, the model section (dimensions, layout, dropout) and the tokenizer
(data.vocab_path) are that workdir's, and train.init_from points at it. The tasks are
t5x_like/data/builtin_tasks.py's (made from the embedded corpus, offline); set data.dataset to a
.jsonl/.csv/.tsv file, a directory of <split> files or a prepared TFDS dataset for your own.
Evaluation reports the task's metrics (`task_*`, t5x_like/experiment/task_eval.py).
"""

import os

from ml_collections import config_dict

from t5x_like import config

SIZES = ("tiny", "mini", "small", "medium", "base", "large")  # configs/encoder_only.py's.

# Built-in task -> (model.encoder_head, data.task, data.seq_len).
TASKS = {
    "docstring_kind": ("classification", "classification", 64),
    "same_document": ("classification", "classification", 128),
    "code_tags": ("token_classification", "token_classification", 128),
    "module_qa": ("question_answering", "question_answering", 128),
}


# The model fields a fine-tuning run does not take from its source workdir (the task sets them).
_HEAD_FIELDS = ("encoder_head", "num_labels")


def _from_workdir(c: config_dict.ConfigDict, workdir: str) -> None:
    """Takes `workdir`'s model section and tokenizer into `c`, and loads its params."""
    here = os.path.dirname(__file__)
    saved = config.load_file(os.path.join(here, "saved_run.py"), workdir)
    if saved.model.get("family") != "encoder_only":
        raise config.ConfigError(
            f"{workdir} holds a model.family={saved.model.get('family')!r} model: fine-tune an "
            "encoder_only workdir (a BERT / RoBERTa)."
        )
    for name, value in saved.model.items():
        if name not in _HEAD_FIELDS:
            c.model[name] = value
    c.data.update(vocab_path=saved.data.vocab_path, extra_ids=saved.data.extra_ids)
    c.data.seq_len = min(c.data.seq_len, c.model.max_len)  # Rows fit its position table.
    c.train.init_from = workdir


def get_config(arg: str = "docstring_kind") -> config_dict.ConfigDict:
    task, _, size = arg.partition(",")
    head, data_task, seq_len = config.preset(TASKS, task, "task")
    workdir = size if os.sep in size or os.path.isdir(os.path.expanduser(size)) else ""
    if workdir and not os.path.isfile(os.path.join(os.path.expanduser(workdir), "config.json")):
        raise config.ConfigError(
            f"{workdir!r} is no workdir (it has no config.json): after the task give a BERT "
            f"size {tuple(SIZES)} or an encoder_only workdir (convert_checkpoint.py --from_hf "
            "writes one)."
        )
    c = config.load_file(
        os.path.join(os.path.dirname(__file__), "encoder_only.py"),
        "tiny" if workdir else size or "tiny",
    )
    source = os.path.basename(os.path.normpath(workdir)) if workdir else size or "tiny"
    c.name = f"bert_{source}_finetune_{task}"
    c.model.encoder_head = head
    c.model.dropout_rate = 0.1  # BERT's fine-tuning dropout.
    c.data.update(
        task=data_task,
        dataset=f"builtin:{task}",
        vocab_dataset="t5x_like_corpus",  # The pretraining run's vocabulary.
        seq_len=seq_len,
        max_query_len=32,
        doc_stride=32,
    )
    c.train.update(steps=300, eval_every=100, eval_batches=0, checkpoint_every=300)
    c.optimizer.update(learning_rate=3e-4, warmup_steps=30, weight_decay=0.01)
    if workdir:
        _from_workdir(c, os.path.expanduser(workdir))
    return c
