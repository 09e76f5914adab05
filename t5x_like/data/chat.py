"""Chat-style SFT records: a `messages` list rendered with the tokenizer's chat template, the loss
on the assistant turns only.

A record `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`
(ending with an assistant turn) is rendered with the model's Jinja chat template
(`Tokenizer.chat_template`) in the environment transformers' `apply_chat_template` uses (an
immutable sandbox, trim_blocks and lstrip_blocks, loop controls, `{% generation %}`,
`raise_exception`, `tojson`, `strftime_now`, a `namespace` refusing underscore attributes; the
special tokens as `bos_token`, `eos_token`, ...), then tokenized as
transformers does it (no special tokens added: the template writes them), so its ids are those of
`AutoTokenizer.apply_chat_template(messages, tokenize=True)`.

The loss covers each assistant turn: from the end of the conversation before it rendered with
`add_generation_prompt=True` (the assistant header) to the end of the conversation up to and
including it (its content and the template's end-of-turn tokens). Tokens overlapping such a span
get mask 1 (as transformers' `return_assistant_tokens_mask`), everything else 0.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant")
_TOKEN_NAMES = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "unk": "unk_token"}


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, which some templates wrap assistant turns in for
    transformers' assistant-token masks: rendered as its body (the spans are found by prefixes)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed attributes, as transformers' does (a
    chat template is untrusted code)."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"A chat template may not set {name!r}.")


@functools.lru_cache(maxsize=8)
def compile_template(template: str) -> jinja2.Template:
    """`template` compiled in transformers' chat-template environment."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"The tokenizer's chat template is not valid Jinja: {e}.") from None


def special_tokens(vocab: Any) -> dict[str, str]:
    """{"bos_token": "<s>", "eos_token": ...}: the specials `vocab` has, as templates read them."""
    tokens = {}
    for kind, name in _TOKEN_NAMES.items():
        i = getattr(vocab, f"{kind}_id", None)
        if i is not None:
            tokens[name] = vocab.id_to_piece(i)
    return tokens


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    **tokens: str,
) -> str:
    """The text of `messages` in chat template `template` (`tokens`: bos_token, eos_token, ...).

    Raises ValueError with the template's own message (e.g. its `raise_exception`)."""
    try:
        return compile_template(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **tokens,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"The tokenizer's chat template refused the conversation: {e}") from None


def check_messages(messages: Any) -> list[dict[str, str]]:
    """`messages` as a list of {"role", "content"}; ValueError saying what to change when it is
    not a non-empty list of such dicts with known roles that ends with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"An SFT record's `messages` must be a non-empty list of {{'role', 'content'}} "
            f"objects, got {str(messages)[:60]!r}."
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"SFT messages[{i}] must be an object with role and content.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"SFT messages[{i}] has role {role!r}: use one of {ROLES}.")
        if not isinstance(content, str):
            raise ValueError(f"SFT messages[{i}] ({role}) needs a string `content`.")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "assistant":
        raise ValueError(
            f"An SFT conversation must end with an assistant turn (the last of its "
            f"{len(checked)} messages is {checked[-1]['role']!r}): drop the trailing turns or "
            "add the assistant's answer."
        )
    return checked


def assistant_spans(
    template: str, messages: Sequence[Mapping[str, str]], tokens: Mapping[str, str]
) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character span [start, end) of each assistant turn).

    Raises ValueError when the template does not render conversations prefix by prefix (e.g.
    one that rewrites earlier turns), which these spans need."""
    text = render(template, messages, **tokens)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = render(template, messages[:i], add_generation_prompt=True, **tokens)
        upto = render(template, messages[: i + 1], **tokens)
        if not (upto.startswith(header) and text.startswith(upto)):
            raise ValueError(
                f"The tokenizer's chat template renders message {i} differently once later turns "
                "follow, so its assistant tokens cannot be found: split the conversation into "
                "one record per assistant turn, or use prompt/completion records."
            )
        spans.append((len(header), len(upto)))
    return text, spans


def conversation_ids(vocab: Any, messages: Any) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a `messages` conversation: the ids of transformers'
    `apply_chat_template(messages, tokenize=True)`, mask 1 on the assistant turns' tokens.

    Raises ValueError (one line) for a tokenizer without a chat template or bad messages."""
    template = getattr(vocab, "chat_template", None)
    if not template:
        where = getattr(vocab, "path", "data.vocab_path")
        raise ValueError(
            f"SFT records with `messages` need a tokenizer with a chat template, and {where} has "
            "none: add `chat_template` to its tokenizer_config.json (or a chat_template.jinja), "
            "or write prompt/completion records."
        )
    messages = check_messages(messages)
    text, spans = assistant_spans(template, messages, special_tokens(vocab))
    if hasattr(vocab, "encode_with_offsets"):
        ids, offsets = vocab.encode_with_offsets(text)
        mask = [int(any(s < end and e > start for start, end in spans)) for s, e in offsets]
        return list(ids), mask
    # Without offsets, encode piece by piece (exact where the pieces meet at special tokens).
    ids, mask, at = [], [], 0
    for start, end in spans:
        for piece, value in ((text[at:start], 0), (text[start:end], 1)):
            piece_ids = vocab.encode(piece) if piece else []
            ids += piece_ids
            mask += [value] * len(piece_ids)
        at = end
    tail = vocab.encode(text[at:]) if text[at:] else []
    return ids + tail, mask + [0] * len(tail)


def chat_example(
    vocab: Any, messages: Any, seq_len: int, start_id: int, too_long: str = "error"
) -> tuple[dict[str, np.ndarray] | None, int]:
    """(the causal-LM example {"inputs", "targets", "loss_mask"} of a conversation, its token
    count). A leading `start_id` the template writes (its BOS) becomes the first input rather than
    a target. Too long: 'error' raises, 'drop' gives None, 'truncate' keeps the first `seq_len`
    tokens (None when no assistant token is left)."""
    ids, mask = conversation_ids(vocab, messages)
    if ids and ids[0] == start_id:
        ids, mask = ids[1:], mask[1:]
    n = len(ids)
    if n > seq_len:
        if too_long == "error":
            raise ValueError(
                f"An SFT conversation of {n} tokens exceeds data.seq_len={seq_len}: raise "
                "data.seq_len, or set data.sft_too_long='truncate' or 'drop'."
            )
        if too_long == "drop":
            return None, n
        ids, mask = ids[:seq_len], mask[:seq_len]
    if not any(mask):
        if too_long == "truncate" and n > seq_len:
            return None, n
        raise ValueError("An SFT conversation rendered no assistant tokens: check the template.")
    targets = np.asarray(ids, np.int32)
    return {
        "inputs": np.concatenate([np.asarray([start_id], np.int32), targets[:-1]]),
        "targets": targets,
        "loss_mask": np.asarray(mask, np.int32),
    }, n
