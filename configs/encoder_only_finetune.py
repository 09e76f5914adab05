r"""Fine-tuning a pretrained encoder-only (BERT) model on the built-in labelled tasks.

    --config=configs/encoder_only_finetune.py:docstring_kind   classification (the default)
    --config=configs/encoder_only_finetune.py:same_document    sentence-pair classification
    --config=configs/encoder_only_finetune.py:code_tags        BIO token classification
    --config=configs/encoder_only_finetune.py:module_qa        extractive QA (SQuAD 2.0-style)
    --config=configs/encoder_only_finetune.py:docstring_kind,mini   on another BERT size

Point `--config.train.init_from` at a pretraining workdir of configs/encoder_only.py (same
size): its encoder and embeddings are loaded, the task's head starts fresh. The tasks are
t5x_like/data/builtin_tasks.py's (made from the embedded corpus, offline); set data.dataset to a
.jsonl/.csv/.tsv file, a directory of <split> files or a prepared TFDS dataset for your own.
Evaluation reports the task's metrics (`task_*`, t5x_like/experiment/task_eval.py).
"""

import os

from ml_collections import config_dict

from t5x_like import config

# Built-in task -> (model.encoder_head, data.task, data.seq_len).
TASKS = {
    "docstring_kind": ("classification", "classification", 64),
    "same_document": ("classification", "classification", 128),
    "code_tags": ("token_classification", "token_classification", 128),
    "module_qa": ("question_answering", "question_answering", 128),
}


def get_config(arg: str = "docstring_kind") -> config_dict.ConfigDict:
    task, _, size = arg.partition(",")
    head, data_task, seq_len = config.preset(TASKS, task, "task")
    c = config.load_file(os.path.join(os.path.dirname(__file__), "encoder_only.py"), size or "tiny")
    c.name = f"bert_{size or 'tiny'}_finetune_{task}"
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
    return c
