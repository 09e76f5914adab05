"""Hugging Face interoperability: import and export of weights and configs (the `[hf]` extra).

One conversion path serves every model family: `t5x_like.interop.family.Family`, a table per
family (its config.json mapping both ways, the layout HF can express, its weight rules, the keys
HF ignores) whose methods import, export and save. Each family module holds its table and its
true differences, and binds the methods to its public names:

- `t5x_like.interop.t5`: T5 v1.0 / v1.1 (and mT5) <-> `EncoderDecoderTransformer` (`T5`).
- `t5x_like.interop.gpt2`: GPT-2 (`GPT2LMHeadModel`) <-> `DecoderOnlyTransformer` (`GPT2`).
- `t5x_like.interop.llama`: LLaMA (`LlamaForCausalLM`; MHA, GQA or MQA, tied or untied head)
  <-> `DecoderOnlyTransformer` (`LLAMA`).

Each offers `config_from_hf`, `import_<family>`, `export_<family>`, `hf_config_dict`,
`hf_config_from` and `save_hf_checkpoint`. `t5x_like.interop.registry.family_for` picks the
family from a checkpoint's config.json `model_type`.

`t5x_like.interop.common` holds the building blocks: reading checkpoints and configs without
torch, declarative weight rules (one HF tensor <-> one of our params, or several for a fused
tensor; each direction exact), validation with clear errors, and stacking of scanned layers. A
new family is a module with its rules, its config mapping and its `Family` table, listed in the
registry.

Loading needs only numpy and `safetensors`; torch and transformers are imported only by the
functions that build transformers objects (`hf_config_from`).
"""
