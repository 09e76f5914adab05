"""Test helper: a BERT WordPiece tokenizer trained locally (tokenizers' WordPiece trainer, no
network), saved by transformers' `BertTokenizerFast.save_pretrained` as a model directory
(tokenizer.json, tokenizer_config.json, special_tokens_map.json), as a Hub BERT has them."""

import pathlib

# The BERT special tokens, first in the vocabulary as the trainer places them (ids 0..4).
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def training_texts() -> list[str]:
    """Some English and Python-docs text: enough for a few hundred WordPiece pieces."""
    from t5x_like.data import corpus, docstrings

    records = docstrings.to_examples(corpus.collect_records())
    return [f"{r['summary']} {r['body']}" for r in records[:400]]


def save_wordpiece_bert(directory: str | pathlib.Path, vocab_size: int = 600) -> pathlib.Path:
    """Trains an uncased WordPiece vocabulary of `vocab_size` pieces and saves it as a BERT
    tokenizer directory; returns the directory."""
    import transformers
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    directory = pathlib.Path(directory)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS))
    tok.train_from_iterator(training_texts(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, do_lower_case=True)
    fast.save_pretrained(str(directory))
    return directory
