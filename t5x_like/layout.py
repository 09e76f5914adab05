"""Scanned <-> unscanned parameter layouts of the Transformer stacks.

A `TransformerStack` (the decoder-only model's `decoder`; T5's `encoder` and `decoder`) holds its
layers in one of two layouts, chosen by `model.scan_layers`:

  unscanned (scan_layers=False)   <stack>/layers_<i>/<name>    one subtree per layer, i = 0..N-1
                                  e.g. decoder/layers_3/mlp/wi_0/kernel          [E, F]
  scanned   (scan_layers=True)    <stack>/layers/<name>        one subtree, every leaf with a
                                  leading [N] axis (logical axis "layers", what nn.scan makes)
                                  e.g. decoder/layers/mlp/wi_0/kernel            [N, E, F]

Everything else (embeddings, the stack's final norm, T5's shared relative position bias
`<stack>/relpos_bias`) is the same in both. `convert_params` turns a params tree into either
layout; `convert_tree` does the same to every params-shaped subtree of a larger tree, such as
an optimizer state whose moments mirror the params (Adam's mu/nu). Conversion is exact (a
stack/index of the same numbers) and happens on the host (numpy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

_LAYER_KEY = re.compile(r"layers_(\d+)$")


def stack_layers(stack: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """A stack's `layers_0..N-1` subtrees -> one `layers` subtree with a leading layer axis
    (the layout `nn.scan` gives the params of a scanned stack)."""
    stack = dict(stack)
    layers = [stack.pop(f"layers_{i}") for i in range(num_layers)]
    stack["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
    return stack


def unstack_layers(stack: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Inverse of `stack_layers`."""
    stack = dict(stack)
    scanned = stack.pop("layers")
    for i in range(num_layers):
        stack[f"layers_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), scanned)
    return stack


def _is_stack(node: Any) -> bool:
    return isinstance(node, Mapping) and (
        "layers" in node or any(_LAYER_KEY.match(str(k)) for k in node)
    )


def is_scanned(params: Mapping[str, Any]) -> bool | None:
    """Whether `params`' stacks are scanned (None: no stack found)."""
    for node in params.values():
        if _is_stack(node):
            return "layers" in node
    return None


def _num_layers(stack: Mapping[str, Any]) -> int:
    if "layers" in stack:
        return int(jax.tree.leaves(stack["layers"])[0].shape[0])
    return len([k for k in stack if _LAYER_KEY.match(str(k))])


def convert_params(params: Mapping[str, Any], scan_layers: bool) -> dict[str, Any]:
    """`params` (plain, unboxed) in the scanned (`scan_layers`) or unscanned layout; stacks
    already in that layout are left as they are. Layer counts come from the tree itself."""
    out = dict(params)
    for name, node in params.items():
        if not _is_stack(node):
            continue
        scanned = "layers" in node
        if scan_layers and not scanned:
            out[name] = stack_layers(node, _num_layers(node))
        elif scanned and not scan_layers:
            out[name] = unstack_layers(node, _num_layers(node))
    return out


def _is_params_like(node: Any) -> bool:
    return isinstance(node, Mapping) and any(_is_stack(v) for v in node.values())


def convert_tree(tree: Any, scan_layers: bool) -> Any:
    """`tree` with every params-shaped subtree (a dict holding a layer stack) converted by
    `convert_params`: an optimizer state's moments, or a whole TrainState's params."""
    return jax.tree.map(
        lambda node: convert_params(node, scan_layers) if _is_params_like(node) else node,
        tree,
        is_leaf=_is_params_like,
    )
