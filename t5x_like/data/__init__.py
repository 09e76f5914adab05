"""Data: the embedded corpus, SentencePiece vocabularies, preprocessing, packing, pipelines."""
