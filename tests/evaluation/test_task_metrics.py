"""Task metrics on fixed inputs against values worked out by hand (the reference libraries do the
counting; these numbers check that we call them as the definitions say)."""

import numpy as np
import pytest

from t5x_like.data import featurize, qa_features
from t5x_like.evaluation import task_metrics as tm

# Three classes. Per class (TP, predicted, true): 0 -> (2, 4, 3), 1 -> (2, 3, 3), 2 -> (1, 1, 2).
LABELS = [0, 0, 1, 1, 1, 2, 2, 0]
PREDS = [0, 1, 1, 1, 0, 2, 0, 0]


def test_accuracy_and_micro_average():
    assert tm.accuracy(PREDS, LABELS) == pytest.approx(5 / 8)
    micro = tm.precision_recall_f1(PREDS, LABELS, average="micro")
    assert micro == pytest.approx({"precision": 5 / 8, "recall": 5 / 8, "f1": 5 / 8})


def test_macro_average():
    # Precision 1/2, 2/3, 1; recall 2/3, 2/3, 1/2; F1 4/7, 2/3, 2/3.
    macro = tm.precision_recall_f1(PREDS, LABELS, average="macro")
    assert macro["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert macro["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert macro["f1"] == pytest.approx((4 / 7 + 2 / 3 + 2 / 3) / 3)


def test_matthews_multiclass():
    # Gorodkin's R_K: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)),
    # c = 5 correct, s = 8, predicted counts p = (4, 3, 1), true counts t = (3, 3, 2).
    expected = (5 * 8 - (4 * 3 + 3 * 3 + 1 * 2)) / np.sqrt((64 - 26) * (64 - 22))
    assert tm.matthews_corrcoef(PREDS, LABELS) == pytest.approx(expected)


def test_binary_precision_recall_f1_and_mcc():
    labels = [1, 1, 0, 1, 0, 0, 1, 0]
    preds = [1, 0, 0, 1, 1, 0, 1, 0]  # TP 3, FN 1, FP 1, TN 3.
    binary = tm.precision_recall_f1(preds, labels, average="binary", positive_label=1)
    assert binary == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    assert tm.matthews_corrcoef(preds, labels) == pytest.approx((3 * 3 - 1 * 1) / 16)
    # Label names work as well as ids; a never-predicted class scores 0, not an error.
    words = ["pos" if x else "neg" for x in labels]
    assert tm.precision_recall_f1(["neg"] * 8, words, average="binary", positive_label="pos")[
        "f1"
    ] == pytest.approx(0.0)
    everything = tm.classification_metrics(preds, labels, positive_label=1)
    assert everything["f1_binary"] == pytest.approx(0.75)
    assert everything["accuracy"] == pytest.approx(6 / 8)
    assert tm.matthews_corrcoef([0] * 8, labels) == 0.0  # Constant predictions.


def test_bad_classification_inputs():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        tm.accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="average='weighted' is not one of"):
        tm.precision_recall_f1(PREDS, LABELS, average="weighted")


def test_entity_f1_bio():
    refs = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    # Entities: true MISC[3:6], PER[0:2]; predicted MISC[2:6] (wrong start), PER[0:2].
    # Tags: tokens 2 (O / B-MISC) and 3 (B-MISC / I-MISC) differ, 8 of 10 agree.
    scores = tm.entity_metrics(preds, refs)
    assert scores == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "token_accuracy": 8 / 10}
    )


def test_entity_f1_conlleval_versus_strict():
    refs = [["B-PER", "I-PER", "O", "B-LOC"]]
    preds = [["I-PER", "I-PER", "O", "B-LOC"]]
    # conlleval: an I- tag after O opens an entity, so PER[0:2] matches; 2 of 2.
    assert tm.entity_metrics(preds, refs)["f1"] == pytest.approx(1.0)
    # Strict IOB2: that I-PER opens nothing; 1 predicted entity (LOC), correct; 2 true ones.
    strict = tm.entity_metrics(preds, refs, strict=True)
    assert strict["precision"] == pytest.approx(1.0)
    assert strict["recall"] == pytest.approx(0.5)
    assert strict["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="Sentence 0: 3 predicted tags but 4 reference"):
        tm.entity_metrics([["O", "O", "O"]], refs)


def test_squad_normalisation():
    assert tm.normalize_answer("The  Cat's, hat!") == "cats hat"
    assert tm.normalize_answer("An apple a day") == "apple day"
    assert tm.normalize_answer("theatre") == "theatre"  # Articles only as whole words.
    assert tm.normalize_answer("  ") == ""


def test_squad_exact_and_f1_by_hand():
    # "cat sat on mat" vs "cat on mat": 3 common tokens, precision 3/4, recall 1.
    assert tm.squad_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert tm.squad_exact("The cat.", "cat") == 1.0
    # Repeated tokens count as often as both sides have them: x:min(2,1) + y:min(1,2) = 2.
    assert tm.squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert tm.squad_f1("", "Denver") == 0.0  # Empty prediction.
    assert tm.squad_f1("", "") == 1.0  # Both empty (SQuAD 2.0's no-answer).
    assert tm.squad_f1("the", "a") == 1.0  # Both only articles: both empty after normalising.


def test_squad_metrics_take_the_best_gold_answer():
    predictions = ["Denver Broncos", "Broncos team", "", "", "something"]
    golds = [
        ["Denver Broncos", "The Denver Broncos", "Broncos"],  # EM 1, F1 1.
        ["Denver Broncos", "Broncos"],  # EM 0, F1 max(1/2, 2/3) = 2/3.
        ["Denver"],  # Empty prediction: 0, 0.
        [],  # Unanswerable, empty prediction: 1, 1.
        [],  # Unanswerable, an answer given: 0, 0.
    ]
    scores = tm.squad_metrics(predictions, golds)
    assert scores["exact_match"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 0 + 1 + 0) / 5)
    with pytest.raises(ValueError, match="list of answer texts"):
        tm.squad_metrics(["a"], ["a"])


def test_rouge_by_hand():
    predictions = ["the cat sat on the mat", "hello world"]
    references = ["the cat is on the mat", "goodbye world"]
    # Pair 1: unigrams 5 of 6 both ways; bigrams the-cat, on-the, the-mat: 3 of 5; LCS 5 of 6.
    # Pair 2: unigrams 1 of 2; no common bigram; LCS 1 of 2.
    scores = tm.rouge(predictions, references)
    assert scores["rouge1"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert scores["rouge2"] == pytest.approx((3 / 5 + 0) / 2)
    assert scores["rougeL"] == pytest.approx((5 / 6 + 1 / 2) / 2)


def _window(eid, offsets, max_context):
    return qa_features.QAWindow(eid, 0, np.array(offsets, np.int32), np.array(max_context, bool))


def test_qa_predictions_n_best_and_limits():
    context = "alpha beta gamma"
    # Row: [CLS] q [SEP] alpha beta gamma [SEP]
    offsets = [(-1, -1), (-1, -1), (-1, -1), (0, 5), (6, 10), (11, 16), (-1, -1)]
    window = _window("e", offsets, [0, 0, 0, 1, 1, 1, 0])
    start = np.array([[0.0, 9.0, 0, 3.0, 2.0, 1.0, 0]])  # The question token is no answer.
    end = np.array([[0.0, 0, 0, 1.0, 2.0, 4.0, 9.0]])  # Nor is [SEP].
    out = tm.qa_predictions([window], start, end, {"e": context})
    # Best spans: alpha..gamma 3+4, beta..gamma 2+4, alpha..beta 3+2.
    assert [text for text, _ in out["e"][:3]] == ["alpha beta gamma", "beta gamma", "alpha beta"]
    assert [score for _, score in out["e"][:3]] == pytest.approx([7.0, 6.0, 5.0])
    # n_best=2: the two best starts (the question token, alpha) and ends ([SEP], gamma) only.
    two = tm.qa_predictions([window], start, end, {"e": context}, n_best=2)
    assert two["e"] == [("alpha beta gamma", pytest.approx(7.0))]
    short = tm.qa_predictions([window], start, end, {"e": context}, max_answer_length=1)
    assert short["e"][0][0] == "gamma"  # 1 + 4 beats every one-token span.
    # A start token whose widest context is in another window is not scored here.
    other = _window("e", offsets, [0, 0, 0, 0, 1, 1, 0])
    assert tm.qa_predictions([other], start, end, {"e": context})["e"][0][0] == "beta gamma"


def test_qa_predictions_null_answer():
    offsets = [(-1, -1), (0, 5), (-1, -1)]
    window = _window("e", offsets, [0, 1, 0])
    start, end = np.array([[5.0, 1.0, 0]]), np.array([[5.0, 1.0, 0]])  # null 10, span 2.
    assert tm.qa_predictions([window], start, end, {"e": "alpha"})["e"][0][0] == "alpha"
    v2 = tm.qa_predictions([window], start, end, {"e": "alpha"}, null_threshold=0.0)
    assert v2["e"][0][0] == ""
    v2_high = tm.qa_predictions([window], start, end, {"e": "alpha"}, null_threshold=9.0)
    assert v2_high["e"][0][0] == "alpha"


def test_qa_round_trip_over_strided_windows():
    """Logits peaked on the featurized answer positions give back the answer text, from the
    window that holds it, across a stride that splits the context into several windows."""
    vocab = {}

    def encode(text):  # Two pieces for long words, as a sub-word vocabulary would.
        ids = [vocab.setdefault(text, 10 + len(vocab))]
        return ids * (2 if len(text) > 5 else 1)

    context = "one two three four five six seven eight nine ten eleven twelve thirteen"
    answer = "eight nine"
    example = {
        "id": "q1",
        "question": "which",
        "context": context,
        "answers": [{"text": answer, "start": context.index(answer)}],
    }
    special = featurize.SpecialIds(cls=1, sep=2)
    features, windows = qa_features.qa_dataset([example], encode, special, 10, doc_stride=3)
    assert len(windows) > 2
    hits = np.flatnonzero(features["start_positions"][:, 0])
    assert len(hits) >= 1
    start = np.zeros(features["inputs"].shape)
    end = np.zeros(features["inputs"].shape)
    for w in hits:
        start[w, features["start_positions"][w, 0]] = 10.0
        end[w, features["end_positions"][w, 0]] = 10.0
    contexts, golds = qa_features.references([example])
    out = tm.qa_predictions(windows, start, end, contexts)
    assert out["q1"][0][0] == answer
    assert tm.squad_metrics([out["q1"][0][0]], [golds["q1"]]) == {"exact_match": 1.0, "f1": 1.0}
