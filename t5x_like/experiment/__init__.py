"""Experiment assembly: a config turned into mesh, data, model and state, and the loops over them.

Sits above training/, checkpointing/, evaluation/ and decoding: `assembly` builds an
`Experiment`, `trainer` trains it, `evaluator` and `inference` restore and use a checkpoint.
"""
