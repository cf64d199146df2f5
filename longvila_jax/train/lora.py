"""LoRA for the LLM's projections, and merging the adapters back for export.

``apply_lora(model, rank, alpha, targets)`` replaces each targeted ``Dense``
of the decoder (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``gate_proj``, ``up_proj``, ``down_proj``) by a :class:`LoRADense` that
keeps the original layer as ``base`` and adds

    y = base(x) + (alpha / rank) * (x @ lora_a) @ lora_b

with ``lora_a [*, in, rank]`` (normal, std ``1/sqrt(in)``) and ``lora_b
[*, rank, out]`` (zeros, so training starts from the base model).  The
decoder's layers are stacked, so every adapter has the leading ``layers``
axis of its kernel.  Adapter parameters are named ``*.lora_a``/``*.lora_b``
for the stage's trainable patterns (``train.freeze``); the rank axis is
replicated, the other axis follows the kernel's logical axis.

``merge_lora(model)`` folds ``(alpha / rank) * lora_a @ lora_b`` into each
base kernel and puts the plain ``Dense`` back, in place, so the model has the
original structure and exports through ``save_pretrained``/``save_orbax``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax.models.layers import Dense

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRADense(nnx.Module):
    """``base(x) + scale * (x @ lora_a) @ lora_b`` around a ``Dense`` whose kernel is ``[*, in, out]``."""

    def __init__(self, base: Dense, rank: int, alpha: float, rngs: nnx.Rngs):
        kernel = base.kernel
        *lead, fan_in, fan_out = kernel.get_value().shape
        axes = tuple(kernel.get_metadata("logical_axes"))
        lead_axes, in_axis, out_axis = axes[:-2], axes[-2], axes[-1]
        dtype = kernel.get_value().dtype
        a = jax.random.normal(rngs.params(), (*lead, fan_in, rank), jnp.float32) / jnp.sqrt(fan_in)
        self.base = base
        self.lora_a = nnx.Param(a.astype(dtype), logical_axes=(*lead_axes, in_axis, None))
        self.lora_b = nnx.Param(jnp.zeros((*lead, rank, fan_out), dtype), logical_axes=(*lead_axes, None, out_axis))
        self.scale = float(alpha) / float(rank)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.base.dtype
        low = jnp.einsum("...i,ir->...r", x.astype(dtype), self.lora_a[...].astype(dtype))
        delta = jnp.einsum("...r,ro->...o", low, self.lora_b[...].astype(dtype))
        return self.base(x) + (self.scale * delta).astype(dtype)

    def merged_kernel(self) -> jax.Array:
        """``kernel + scale * lora_a @ lora_b`` in float32, cast to the kernel's dtype."""
        kernel = self.base.kernel[...]
        delta = jnp.einsum("...ir,...ro->...io", self.lora_a[...].astype(jnp.float32),
                           self.lora_b[...].astype(jnp.float32))
        return (kernel.astype(jnp.float32) + self.scale * delta).astype(kernel.dtype)


def _targets_in(model: nnx.Module, kind, targets):
    """``(parent, name, module)`` of every ``kind`` module of the LLM named in ``targets``."""
    found = []
    for path, module in nnx.iter_graph(model):
        if isinstance(module, kind) and path and path[0] == "llm" and str(path[-1]) in targets:
            parent = model
            for key in path[:-1]:
                parent = getattr(parent, key) if isinstance(key, str) else parent[key]
            found.append((parent, path[-1], module))
    return found


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, targets=TARGETS, seed: int = 0) -> nnx.Module:
    """Wraps the LLM's ``targets`` projections with LoRA adapters, in place; returns ``model``."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not LLM projections; choose from {list(TARGETS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    rngs = nnx.Rngs(seed)
    found = _targets_in(model, Dense, tuple(targets))
    if not found:
        raise ValueError(f"no LLM projection named {list(targets)} found to wrap with LoRA")
    for parent, name, dense in found:
        setattr(parent, name, LoRADense(dense, rank, alpha, rngs))
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its base kernel and restores the plain ``Dense`` layers, in place."""
    for parent, name, lora in _targets_in(model, LoRADense, TARGETS):
        lora.base.kernel.set_value(lora.merged_kernel())
        setattr(parent, name, lora.base)
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(m, LoRADense) for _, m in nnx.iter_graph(model))
