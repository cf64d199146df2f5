"""Logical axis names and the one table that maps them to mesh axes.

Model code names the axes of every parameter and activation with the logical
names below; only this module knows the mesh axes ``data``, ``fsdp``,
``ring`` and ``ulysses`` (outermost first).  Parameters are sharded ZeRO-3
style: their largest logical axis goes over every mesh axis that is free.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "ring", "ulysses")
BATCH_AXES = ("data", "fsdp")
SEQUENCE_AXES = ("ring", "ulysses")
PARAM_AXES = ("data", "fsdp", "ring", "ulysses")

# logical name -> mesh axes (a tuple) or None (replicated).
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    # parameters: one large axis per tensor carries the ZeRO-3 split.
    "vocab": PARAM_AXES,
    "embed": None,
    "mlp": PARAM_AXES,
    "heads": PARAM_AXES,
    "kv_heads": None,
    "q_proj": PARAM_AXES,      # fused heads*head_dim output axis of q/o
    "kv_proj": None,           # fused kv_heads*head_dim output axis of k/v
    "head_dim": None,
    "norm": None,
    "layers": None,            # the scanned (stacked) layer axis
    "patch": None,             # flattened patch pixels (p*p*3)
    "vision_embed": None,
    "vision_mlp": PARAM_AXES,
    "vision_pos": None,
    "proj_in": None,
    "proj_hidden": PARAM_AXES,
    # activations
    "batch": BATCH_AXES,
    "seq": SEQUENCE_AXES,
    "frames": MESH_AXES,
}


def mesh_axes_for(logical: Sequence[str | None], mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names under ``LOGICAL_RULES``.

    Mesh axes already used by an earlier dimension, or absent from ``mesh``,
    are dropped, so one table serves every mesh shape.
    """
    used: set[str] = set()
    spec = []
    for name in logical:
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in longvila_jax.sharding.LOGICAL_RULES")
        axes = LOGICAL_RULES[name] or ()
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(axes if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def divisible_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from ``spec`` where the dimension does not divide evenly."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if entry is None:
            out.append(None)
            continue
        axes = entry if isinstance(entry, tuple) else (entry,)
        kept: list[str] = []
        size = 1
        for axis in axes:
            if dim % (size * mesh.shape[axis]) == 0:
                kept.append(axis)
                size *= mesh.shape[axis]
        out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*out)


def param_sharding(shape: Sequence[int], logical: Sequence[str | None], mesh: Mesh) -> NamedSharding:
    """NamedSharding of one parameter from its logical axis names."""
    return NamedSharding(mesh, divisible_spec(shape, mesh_axes_for(logical, mesh), mesh))


def make_mesh(data: int = 1, fsdp: int = 1, ring: int = 1, ulysses: int = 1, devices=None) -> Mesh:
    """A mesh with the four axes (outermost first); sizes must multiply to the device count."""
    devices = list(jax.devices() if devices is None else devices)
    want = data * fsdp * ring * ulysses
    if want != len(devices):
        raise ValueError(
            f"mesh data={data} fsdp={fsdp} ring={ring} ulysses={ulysses} needs {want} devices, "
            f"but {len(devices)} are given; change the axis sizes so they multiply to {len(devices)}"
        )
    grid = np.asarray(devices, dtype=object).reshape(data, fsdp, ring, ulysses)
    return Mesh(grid, MESH_AXES)
