"""Hugging Face interoperability: import and export of weights and configs (the `[hf]` extra).

One sibling module per model family converts between a Hugging Face checkpoint (its state-dict
naming and `config.json`) and our parameter tree and `TransformerConfig`:

- `t5x_like.interop.t5`: T5 v1.0 / v1.1 (and mT5) <-> `EncoderDecoderTransformer`.
- `t5x_like.interop.gpt2`: GPT-2 (`GPT2LMHeadModel`) <-> `DecoderOnlyTransformer`.
- `t5x_like.interop.llama`: LLaMA (`LlamaForCausalLM`; MHA, GQA or MQA, tied or untied head)
  <-> `DecoderOnlyTransformer`.

Each offers `config_from_hf`, `import_<family>`, `export_<family>`, `hf_config_dict`,
`hf_config_from` and `save_hf_checkpoint`.

`t5x_like.interop.common` holds what the families share: reading checkpoints and configs without
torch, declarative weight rules (one HF tensor <-> one of our params, or several for a fused
tensor; each direction exact), validation with clear errors, and stacking of scanned layers. A
new family is a list of rules plus its config mapping.

Loading needs only numpy and `safetensors`; torch and transformers are imported only by the
functions that build transformers objects (e.g. `t5.hf_config_from`).
"""
