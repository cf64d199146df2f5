"""Where inference arrays live on the mesh (the only infer module that knows shardings).

Parameters are replicated (decode reads every weight each step; a ZeRO-3
split would gather them every token).  Frames are split over every device
(the vision tower needs no communication).  Prompt tokens, and the prompt's
KV cache, are split over the batch axes and the sequence axes
``("ring", "ulysses")``, as ``sp.attention`` expects.  Everything is
expressed through the logical names of ``longvila_jax.sharding``.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from longvila_jax.sharding import divisible_spec, make_mesh, mesh_axes_for

LOGICAL = {
    "frames": ("frames", None, None, None),          # [F, H, W, 3] pixels, [F, T, E] visual tokens (first 3)
    "tokens": ("batch", "seq"),                      # [B, S] ids / positions / segment ids
    "embeds": ("batch", "seq", None),                # [B, S, E]
    "cache": (None, "batch", "seq", None, None),     # [L, B, S, Hkv, D]
}


def single_device_mesh() -> Mesh:
    """A mesh of the first device with every axis of size 1."""
    return make_mesh(devices=jax.devices()[:1])


def sharding(mesh: Mesh, kind: str, shape) -> NamedSharding:
    """NamedSharding of an array of ``shape`` holding ``kind`` (a key of ``LOGICAL``), rank-trimmed."""
    logical = LOGICAL[kind][:len(shape)]
    return NamedSharding(mesh, divisible_spec(shape, mesh_axes_for(logical, mesh), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def constrain(x: jax.Array, mesh: Mesh, kind: str) -> jax.Array:
    """``with_sharding_constraint`` of ``x`` to its ``kind`` layout (inside jit)."""
    return jax.lax.with_sharding_constraint(x, sharding(mesh, kind, x.shape))


def device_count(mesh: Mesh) -> int:
    return math.prod(mesh.shape.values())
