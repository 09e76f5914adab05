"""t5x_like: encoder-decoder and decoder-only Transformers in JAX/Flax on device meshes."""
