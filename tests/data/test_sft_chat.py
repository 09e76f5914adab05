"""Chat-style SFT (`messages` records, data/chat.py) and the BOS of SFT rows: a byte-level BPE
tokenizer.json with BOS/EOS and a tokenizer_config.json carrying a Jinja chat template (built
here). Rendered ids equal transformers' `apply_chat_template(..., tokenize=True)`, the loss mask
covers exactly the assistant turns (content and end-of-turn tokens), rows start with the BOS,
bad records are one-line errors, and a tiny model trains a few steps on a JSONL of
conversations through experiments/train.py's trainer."""

import json

import numpy as np
import pytest
import transformers
from interop import decoder_parity as parity
from testutil import tiny_config

from t5x_like.data import chat, pipeline, sft, sources, tokenizers
from t5x_like.data import vocab as vocab_lib
from t5x_like.data.tasks import Task
from t5x_like.errors import ConfigError
from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

BOS, EOS, END = "<s>", "</s>", "<|end|>"
TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Namespaces, loop controls and `{% generation %}` (transformers' assistant-mask markers).
GENERATION_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}"
    "{% endfor %}"
    "{{ bos_token }}{% if ns.system %}<|system|>{{ ns.system }}<|end|>{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{% if m.role == 'assistant' %}"
    "<|assistant|>{% generation %}{{ m.content | trim }}<|end|>{% endgeneration %}"
    "{% else %}<|user|>{{ m.content }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONVERSATIONS = [
    [
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue, on a clear day."},
    ],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six, of course."},
    ],
]
TEXTS = [m["content"] for c in CONVERSATIONS for m in c] * 5


def _write(directory, template):
    specials = ["<pad>", BOS, EOS, END, "<|system|>", "<|user|>", "<|assistant|>"]
    parity.write_bpe_tokenizer(directory, TEXTS, specials, BOS, EOS, pad="<pad>")
    if template is not None:
        path = directory / "tokenizer_config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "chat_template": template}))
    return directory


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("chat_tok"), TEMPLATE)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return vocab_lib.load_tokenizer(tok_dir)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_ids_equal_transformers_apply_chat_template(tok, tok_dir, conversation):
    messages = CONVERSATIONS[conversation]
    theirs = transformers.AutoTokenizer.from_pretrained(tok_dir)
    ids, mask = chat.conversation_ids(tok, messages)
    assert ids == theirs.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert chat.render(tok.chat_template, messages, **chat.special_tokens(tok)) == (
        theirs.apply_chat_template(messages, tokenize=False)
    )
    assert ids[0] == tok.bos_id == theirs.bos_token_id
    # The loss covers exactly each assistant turn's content and its end-of-turn tokens.
    runs, current = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    decoded = [theirs.decode(r, skip_special_tokens=False) for r in runs]
    assert decoded == [a + END + "\n" for a in answers]


def test_generation_template_masks_equal_transformers(tmp_path):
    """On a template with `{% generation %}`, the mask equals transformers' own
    `return_assistant_tokens_mask`."""
    directory = _write(tmp_path, GENERATION_TEMPLATE)
    ours, theirs = (
        vocab_lib.load_tokenizer(directory),
        transformers.AutoTokenizer.from_pretrained(directory),
    )
    for messages in CONVERSATIONS:
        ids, mask = chat.conversation_ids(ours, messages)
        out = theirs.apply_chat_template(messages, return_assistant_tokens_mask=True)
        assert ids == out["input_ids"]
        assert mask == out["assistant_masks"] and sum(mask) > 0


def test_sft_rows_start_with_bos_and_weigh_the_assistant_turns(tok):
    transform = sft.SFTExamples(tok, 64, "prompt", "completion", "error")
    ids, mask = chat.conversation_ids(tok, CONVERSATIONS[1])
    (ex,) = transform.flat_map({"messages": CONVERSATIONS[1]})
    # The template's BOS is the first input, not a target: inputs = ids[:-1], targets = ids[1:].
    assert ex["inputs"].tolist() == ids[:-1] and ex["targets"].tolist() == ids[1:]
    assert ex["loss_mask"].tolist() == mask[1:]
    # Prompt/completion records start with the tokenizer's BOS too (no longer pad 0).
    (pair,) = transform.flat_map({"prompt": "Two plus two?", "completion": " Four."})
    assert pair["inputs"][0] == tok.bos_id == 1 and tok.pad_id == 0
    assert pair["targets"].tolist() == [*tok.encode("Two plus two?"), *tok.encode(" Four."), 2]
    # Packed rows (the pipeline's SFT path): weights are the mask, rows start with BOS.
    task = Task("sft", seq_len=64)
    records = [{"messages": c} for c in CONVERSATIONS]
    batch = next(iter(pipeline.make_eval_iterator(records, tok, batch_size=2, task=task)))
    starts = (batch["positions"] == 0) & (batch["segment_ids"] > 0)
    np.testing.assert_array_equal(batch["inputs"][starts], tok.bos_id)
    expected = sum(sum(chat.conversation_ids(tok, c)[1]) for c in CONVERSATIONS)
    assert batch["weights"].sum() == expected


def test_our_vocab_keeps_the_pad_start():
    ours = vocab_lib.SentencePieceVocab(
        vocab_lib.train_sentencepiece(TEXTS * 4, vocab_size=40, max_chars=10**6)
    )
    assert tokenizers.start_ids(ours, fallback=0) == [0]
    (ex,) = sft.SFTExamples(ours, 32, "prompt", "completion", "error").flat_map(
        {"prompt": "Two", "completion": " Four."}
    )
    assert ex["inputs"][0] == 0


def test_bad_messages_are_one_line_errors(tok, tmp_path):
    transform = sft.SFTExamples(tok, 64, "prompt", "completion", "error")
    user = {"role": "user", "content": "Hi"}
    cases = [
        ([user, {"role": "bot", "content": "Hello"}], r"messages\[1\] has role 'bot': use one of"),
        ([user], r"must end with an assistant turn .* 'user'"),
        ([], "must be a non-empty list"),
        ([user, {"role": "assistant", "content": 3}], r"messages\[1\] \(assistant\) needs a str"),
    ]
    for messages, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            transform.flat_map({"messages": messages})
        assert "\n" not in str(e.value)
    plain = vocab_lib.load_tokenizer(_write(tmp_path, None))
    assert plain.chat_template is None
    with pytest.raises(ValueError, match=r"has none: add `chat_template` to its tokenizer_config"):
        sft.SFTExamples(plain, 64, "prompt", "completion", "error").flat_map(
            {"messages": CONVERSATIONS[0]}
        )
    # In a JSONL file, the reader names the file and line.
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": CONVERSATIONS[0]})
    bad.write_text(good + "\n" + json.dumps({"messages": [user]}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: An SFT conversation must end with an"):
        sources.prepare_dataset(str(bad), fields=("prompt", "completion"))["train"]
    # The template's own raise_exception is one line too.
    strict = tmp_path / "strict"
    strict.mkdir()
    _write(strict, "{{ raise_exception('Only user and assistant roles are supported!') }}")
    with pytest.raises(ValueError, match="refused the conversation: Only user and assistant"):
        chat.conversation_ids(vocab_lib.load_tokenizer(strict), CONVERSATIONS[0])
    # The sandbox: no underscore attributes on a namespace; a syntax error names the template.
    with pytest.raises(ValueError, match="refused the conversation: A chat template may not"):
        chat.render("{% set ns = namespace(_x=1) %}", CONVERSATIONS[0])
    with pytest.raises(ValueError, match="chat template is not valid Jinja"):
        chat.render("{% for m in messages %}", CONVERSATIONS[0])


def test_too_long_conversations(tok):
    n = len(chat.conversation_ids(tok, CONVERSATIONS[1])[0]) - 1  # less the BOS
    with pytest.raises(ValueError, match=f"conversation of {n} tokens exceeds data.seq_len=20"):
        sft.SFTExamples(tok, 20, "prompt", "completion", "error").flat_map(
            {"messages": CONVERSATIONS[1]}
        )
    drop = sft.SFTExamples(tok, 20, "prompt", "completion", "drop")
    assert drop.flat_map({"messages": CONVERSATIONS[1]}) == [] and drop.dropped == 1
    cut = sft.SFTExamples(tok, n - 3, "prompt", "completion", "truncate")
    (ex,) = cut.flat_map({"messages": CONVERSATIONS[1]})
    assert len(ex["targets"]) == n - 3 and cut.truncated == 1


def test_tiny_model_trains_on_conversations(tok, tok_dir, tmp_path):
    """experiments/train.py's trainer on a JSONL of conversations, data.vocab_path the chat
    tokenizer: a few steps run and the assistant-token loss falls."""
    data = tmp_path / "chats"
    data.mkdir()
    lines = "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS)
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(lines)
    steps = 12
    cfg = tiny_config(
        **{
            "data.task": "sft",
            "data.dataset": str(data),
            "data.vocab_path": str(tok_dir),
            "data.seq_len": 64,
            "data.num_shards": 1,
            "model.vocab_size": None,
            "model.num_layers": 1,
            "model.dropout_rate": 0.0,
            "train.steps": steps,
            "train.log_every": 1,
            "train.eval_every": steps,
            "train.eval_batches": 1,
            "train.checkpoint_every": steps,
            "optimizer.learning_rate": 1e-2,
            "optimizer.schedule": "constant",
            "optimizer.warmup_steps": 1,
        }
    )
    workdir = str(tmp_path / "run")
    trainer.train(cfg, workdir)
    train, evals = read_metrics(workdir, "train"), read_metrics(workdir, "eval")
    print(
        f"\nchat SFT cross-entropy: step 1 {train[1]['cross_entropy']:.3f}, step {steps} "
        f"{train[steps]['cross_entropy']:.3f}; eval {evals[steps]}"
    )
    assert train[steps]["cross_entropy"] < train[1]["cross_entropy"] - 0.5
    tokens = sum(sum(chat.conversation_ids(tok, c)[1]) for c in CONVERSATIONS)
    assert evals[steps]["tokens"] == tokens


def test_chat_template_sources(tmp_path):
    """chat_template.jinja wins over tokenizer_config.json, whose list form gives 'default'."""
    directory = _write(
        tmp_path, [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]
    )
    assert vocab_lib.load_tokenizer(directory).chat_template == TEMPLATE
    (directory / "chat_template.jinja").write_text(GENERATION_TEMPLATE)
    assert vocab_lib.load_tokenizer(directory).chat_template == GENERATION_TEMPLATE
