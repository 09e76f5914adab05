"""Model assemblies: decoder-only and encoder-decoder Transformers built from layers/."""
