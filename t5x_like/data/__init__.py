"""Data: the embedded corpus, SentencePiece vocabularies, preprocessors, packing and the grain pipeline."""
