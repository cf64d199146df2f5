"""Stacked layers: build N copies with a leading ``layers`` axis, run them with one scan.

Compile time does not grow with depth: the layer body is traced once.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names(
        "attention_out", "sp_attention_out", "sp_attention_lse"),
}


def stack_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """``num_layers`` layers as one module whose parameters have a leading ``layers`` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(layer_rngs):
        return make_layer(layer_rngs)

    stacked = build(rngs)
    for _, variable in nnx.iter_graph(stacked):
        if isinstance(variable, nnx.Variable) and variable.has_metadata("logical_axes"):
            variable.set_metadata("logical_axes", ("layers",) + tuple(variable.get_metadata("logical_axes")))
    return stacked


def scan_layers(stacked: nnx.Module, hidden: jax.Array, *, num_layers: int | None = None,
                remat: str = "none", **kwargs) -> jax.Array:
    """Applies the first ``num_layers`` layers of ``stacked`` in order: ``hidden = layer(hidden, **kwargs)``."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat policy {remat!r} is unknown; use one of {', '.join(REMAT_POLICIES)}")
    graphdef, state = nnx.split(stacked)
    if num_layers is not None:
        state = jax.tree.map(lambda leaf: leaf[:num_layers], state)

    def body(carry, layer_state):
        layer = nnx.merge(graphdef, layer_state)
        return layer(carry, **kwargs), None

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    hidden, _ = jax.lax.scan(body, hidden, state)
    return hidden
