"""Log-likelihood scoring against references: lm-evaluation-harness's own window and metric
functions, and a direct transformers computation on tiny random GPT-2 and LLaMA models imported
with t5x_like.interop (several requests packed per row, left truncation, rolling windows)."""

import functools
import math

import numpy as np
import pytest
import torch
from interop import decoder_parity as parity
from lm_eval import utils as lm_utils
from lm_eval.api import metrics as lm_metrics
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from t5x_like import models
from t5x_like.evaluation import loglikelihood as ll
from t5x_like.experiment import scoring
from t5x_like.interop import gpt2, llama
from t5x_like.models.decoder_only import DecoderOnlyTransformer

VOCAB = 96
ATOL = 1e-4
BOS = 0


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with parity.single_torch_thread():
        yield


# -- pure functions against the harness ----------------------------------------------------------


@pytest.mark.parametrize(
    "length, max_seq_len, context_len",
    [(1, 4, 1), (7, 4, 1), (20, 8, 1), (20, 8, 3), (20, 8, 8), (9, 9, 1), (30, 5, 2)],
)
def test_rolling_windows_are_the_harness_windows(length, max_seq_len, context_len):
    tokens = list(range(10, 10 + length))
    ours = list(ll.rolling_token_windows(tokens, BOS, max_seq_len, context_len))
    theirs = [
        lm_utils.make_disjoint_window(w)
        for w in lm_utils.get_rolling_token_windows(tokens, BOS, max_seq_len, context_len)
    ]
    assert ours == theirs
    assert [t for _, cont in ours for t in cont] == tokens  # every token predicted once
    assert all(len(c) + len(p) - 1 <= max_seq_len for c, p in ours)


def test_rolling_windows_reject_bad_context():
    with pytest.raises(ValueError, match="context_len=0"):
        list(ll.rolling_token_windows([1, 2], BOS, 4, 0))


def test_multiple_choice_metrics_by_hand():
    choices = ["ab", "abcdefgh", "é"]  # 2, 8, 1 characters; 2, 8, 2 bytes
    lls = [-3.0, -4.0, -1.9]
    # acc: argmax lls = 2. acc_norm: -1.5, -0.5, -1.9 -> 1. acc_bytes: -1.5, -0.5, -0.95 -> 1.
    assert ll.multiple_choice_metrics(lls, choices, 2) == {
        "acc": 1.0,
        "acc_norm": 0.0,
        "acc_bytes": 0.0,
    }
    assert ll.multiple_choice_metrics(lls, choices, 1) == {
        "acc": 0.0,
        "acc_norm": 1.0,
        "acc_bytes": 1.0,
    }
    with pytest.raises(ValueError, match="gold=3"):
        ll.multiple_choice_metrics(lls, choices, 3)


def test_aggregates_equal_the_harness():
    items = [(-12.5, 10), (-3.25, 4)]
    assert math.isclose(ll.perplexity(-15.75, 14), lm_metrics.weighted_perplexity(items))
    assert math.isclose(ll.bits_per_byte(-15.75, 14), lm_metrics.bits_per_byte(items))
    text = "one  two\nthree"
    assert ll.count_words(text) == 3
    assert ll.count_bytes("é") == 2


def test_request_scores_sum_and_greedy_by_hand():
    logprobs = np.array([[-1.0, -2.0, -0.5, -4.0], [-0.25, -1.0, -3.0, 0.0]])
    greedy = np.array([[True, False, True, True], [True, True, False, True]])
    ids = np.array([[-1, 0, 1, 1], [2, 2, -1, -1]])
    lls, is_greedy = ll.request_scores(logprobs, greedy, ids, 3)
    np.testing.assert_allclose(lls, [-2.0, -4.5, -1.25])
    assert is_greedy.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="Request 3 has no continuation"):
        ll.request_scores(logprobs, greedy, ids, 4)


def test_pack_requests_layout():
    requests = [
        scoring.Request((BOS, 5, 6), (7, 8)),  # 4 inputs
        scoring.Request((BOS,), (9,)),  # 1 input
        scoring.Request((BOS, 3, 4, 5, 6, 7, 8, 9), (10, 11)),  # 10 tokens > 6: cut from the left
    ]
    ((batch, ids),) = scoring.pack_requests(requests, seq_len=6, batch_rows=2)
    # Longest first: the truncated request fills row 0; requests 0 and 1 share row 1.
    assert batch["inputs"][0].tolist() == [5, 6, 7, 8, 9, 10]
    assert batch["targets"][0].tolist() == [6, 7, 8, 9, 10, 11]
    assert ids[0].tolist() == [-1, -1, -1, -1, 2, 2]
    assert batch["inputs"][1].tolist() == [BOS, 5, 6, 7, BOS, 0]
    assert batch["targets"][1].tolist() == [5, 6, 7, 8, 9, 0]
    assert batch["segment_ids"][1].tolist() == [1, 1, 1, 1, 2, 0]
    assert batch["positions"][1].tolist() == [0, 1, 2, 3, 0, 0]
    assert ids[1].tolist() == [-1, -1, 0, 0, 1, -1]
    with pytest.raises(ValueError, match="continuation of 7 tokens does not fit"):
        scoring.pack_requests([scoring.Request((BOS,), tuple(range(2, 9)))], 6, 1)


# -- known values from transformers ---------------------------------------------------------------


@functools.cache
def _model(kind: str):
    """(HF model, our forward) of a tiny random model of `kind`."""
    torch.manual_seed(0)
    if kind == "gpt2":
        hf_config = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2, n_positions=64,
            initializer_range=0.1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
            eos_token_id=1,
        )  # fmt: skip
        hf = GPT2LMHeadModel(hf_config).eval()
        interop, import_fn = gpt2, gpt2.import_gpt2
    else:
        hf_config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=64,
            initializer_range=0.1,
        )  # fmt: skip
        hf = LlamaForCausalLM(hf_config).eval()
        interop, import_fn = llama, llama.import_llama
    parity.randomise_hf_norms_and_biases(hf)
    config = interop.config_from_hf(hf.config)
    params = import_fn({k: v.numpy() for k, v in hf.state_dict().items()}, config)
    family = models.get("decoder_only")
    forward = scoring.module_forward(family, DecoderOnlyTransformer(config), params)
    return hf, forward


def _hf_score(hf, request: scoring.Request, seq_len: int) -> tuple[float, bool]:
    """The harness's HF computation: (context + continuation)[-(seq_len + 1):][:-1] in, the
    last len(continuation) log-softmax rows gathered at the continuation."""
    whole = [*request.context, *request.continuation][-(seq_len + 1) :]
    inputs = torch.tensor([whole[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(hf(input_ids=inputs).logits[0].double(), dim=-1)
    n = len(request.continuation)
    cont = torch.tensor(request.continuation)
    rows = logp[-n:]
    return float(rows.gather(1, cont[:, None]).sum()), bool((rows.argmax(-1) == cont).all())


def _random_requests(seed: int, count: int, max_context: int, max_cont: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        context = rng.integers(2, VOCAB, int(rng.integers(0, max_context + 1))).tolist()
        cont = rng.integers(2, VOCAB, int(rng.integers(1, max_cont + 1))).tolist()
        out.append(scoring.Request((BOS, *context), tuple(cont)))
    return out


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_scores_equal_transformers(kind):
    hf, forward = _model(kind)
    seq_len = 24
    # Short requests (several per row), requests cut from the left, one filling a row exactly.
    requests = _random_requests(1, 14, 10, 5) + _random_requests(2, 3, 40, 6)
    requests.append(scoring.Request((BOS, *range(2, 2 + seq_len - 3)), (5, 6, 7)))
    scores = scoring.score_requests(forward, requests, seq_len, batch_rows=4)
    assert scores.rows < len(requests)  # packing did put several requests in a row
    theirs = [_hf_score(hf, r, seq_len) for r in requests]
    diff = np.abs(scores.loglikelihoods - [t[0] for t in theirs]).max()
    print(f"\n[{kind}] {len(requests)} requests in {scores.rows} rows: max|ll diff| {diff:.2e}")
    assert diff <= ATOL
    assert scores.greedy.tolist() == [t[1] for t in theirs]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_continuation_is_greedy(kind):
    """A continuation made of the model's own argmax tokens scores is_greedy=True."""
    hf, forward = _model(kind)
    tokens = [BOS, 7, 9]
    with torch.no_grad():
        for _ in range(4):
            tokens.append(int(hf(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    request = scoring.Request(tuple(tokens[:3]), tuple(tokens[3:]))
    other = scoring.Request(tuple(tokens[:3]), (tokens[3], (tokens[4] + 1) % VOCAB))
    scores = scoring.score_requests(forward, [request, other], 16, batch_rows=1)
    assert scores.greedy.tolist() == [True, False]


def test_rolling_loglikelihood_equals_full_sum_and_harness_windows():
    hf, forward = _model("gpt2")
    doc = np.random.default_rng(3).integers(2, VOCAB, 37).tolist()
    with torch.no_grad():
        logp = torch.log_softmax(hf(input_ids=torch.tensor([[BOS, *doc[:-1]]])).logits[0], -1)
    full = float(logp.double().gather(1, torch.tensor(doc)[:, None]).sum())

    def rolling(seq_len, context_len):
        windows = ll.rolling_token_windows(doc, BOS, seq_len, context_len)
        requests = [scoring.Request(tuple(c), tuple(p)) for c, p in windows]
        return scoring.score_requests(forward, requests, seq_len, batch_rows=2), requests

    covering, requests = rolling(40, 1)
    assert len(requests) == 1
    assert abs(covering.loglikelihoods.sum() - full) <= ATOL
    # Smaller windows: the sum of the harness's windows, each computed by transformers.
    for seq_len, context_len in ((8, 1), (10, 4)):
        scores, requests = rolling(seq_len, context_len)
        theirs = sum(_hf_score(hf, r, seq_len)[0] for r in requests)
        assert len(requests) > 3
        assert abs(scores.loglikelihoods.sum() - theirs) <= ATOL
        # Less context changes the scores: the windows are really cut.
        assert abs(scores.loglikelihoods.sum() - full) > 0.1


class _CharVocab:
    """One id per character (ids 2..VOCAB-1): harness-style pair encoding is exact on it."""

    def encode(self, text: str) -> list[int]:
        return [2 + ord(c) % (VOCAB - 2) for c in text]


def test_multiple_choice_acc_and_acc_norm_by_hand():
    hf, forward = _model("gpt2")
    vocab = _CharVocab()
    questions = [
        scoring.Question("The cat sat on the", ("mat", "sofa by the window", "hat"), 0),
        scoring.Question("Two plus two is ", ("four", "five", "a number"), 2),
        scoring.Question("Q: colour of sky?\nA:", ("blue", "green"), 1),
    ]
    report = scoring.score_multiple_choice(
        forward, vocab, questions, seq_len=32, batch_rows=2, delimiter=" "
    )
    accs = []
    for q, result in zip(questions, report["per_question"], strict=True):
        lls = []
        for choice in q.choices:
            context, cont = q.context, " " + choice
            if context.endswith(" "):  # the harness moves the space to the continuation
                context, cont = context[:-1], " " + cont
            request = scoring.Request((BOS, *vocab.encode(context)), tuple(vocab.encode(cont)))
            lls.append(_hf_score(hf, request, 32)[0])
        np.testing.assert_allclose(result["loglikelihoods"], lls, atol=ATOL, rtol=0)
        acc = float(np.argmax(lls) == q.gold)
        acc_norm = float(
            np.argmax([x / len(c) for x, c in zip(lls, q.choices, strict=True)]) == q.gold
        )
        assert (result["acc"], result["acc_norm"]) == (acc, acc_norm)
        accs.append((acc, acc_norm))
    assert report["metrics"]["acc"] == pytest.approx(np.mean([a for a, _ in accs]))
    assert report["metrics"]["acc_norm"] == pytest.approx(np.mean([n for _, n in accs]))
    assert report["choices"] == 8


class _BosCharVocab(_CharVocab):
    """`_CharVocab` with a BOS, id 1: neither the pad id 0 nor any character's id."""

    bos_id = 1


def test_requests_start_with_the_tokenizers_bos_and_match_transformers():
    """A tokenizer with a BOS: pair requests and rolling windows start with it (not pad 0), and
    their scores on an imported LLaMA equal transformers' on the same ids, BOS first."""
    hf, forward = _model("llama")
    vocab = _BosCharVocab()
    context, continuation = "The cat sat on the", " mat"
    request = scoring.encode_pair(vocab, context, continuation)
    assert request == scoring.Request((1, *vocab.encode(context)), tuple(vocab.encode(" mat")))
    assert scoring.encode_pair(_CharVocab(), context, continuation).context[0] == BOS  # no BOS
    scores = scoring.score_requests(forward, [request], 32, batch_rows=1)
    assert abs(scores.loglikelihoods[0] - _hf_score(hf, request, 32)[0]) <= ATOL
    # Rolling: one window covering the document is log p(doc | BOS) by transformers.
    doc = "A rolling document, scored in windows."
    ids = vocab.encode(doc)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([[1, *ids[:-1]]])).logits[0].double()
    full = float(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).sum())
    report = scoring.score_documents(forward, vocab, [doc], seq_len=48, batch_rows=1)
    assert report["windows"] == 1
    assert abs(report["loglikelihoods"][0] - full) <= ATOL
    # BOS changes the score: the start token really is the tokenizer's.
    without = scoring.score_documents(forward, _CharVocab(), [doc], seq_len=48, batch_rows=1)
    assert abs(without["loglikelihoods"][0] - full) > 1e-3
