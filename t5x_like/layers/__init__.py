"""Transformer building blocks shared by both model families."""
