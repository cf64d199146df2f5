"""Shardings of the training state and of a step's batch, all from ``longvila_jax.sharding``'s one table.

* Parameters: ``param_sharding`` of each parameter's ``logical_axes``
  (ZeRO-3: the large axis of every tensor over all free mesh axes).
* Optimizer state: a leaf whose key path ends with a parameter's key path
  (AdamW's ``mu``/``nu`` mirror the parameters) takes that parameter's
  sharding; every other leaf (counts, scalars) is replicated.
* Batch: per-token arrays ``[B, S]`` over ``("batch", "seq")``, frames
  ``[F, H, W, 3]`` over ``"frames"`` (every device), a leading micro-batch
  axis (gradient accumulation) unsharded.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from longvila_jax.sharding import divisible_spec, mesh_axes_for, param_sharding

TOKEN_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token")


def logical_axes_tree(state: nnx.State) -> dict:
    """Pure dict of ``state`` with each leaf replaced by its parameter's ``logical_axes`` tuple."""
    def axes(variable):
        logical = variable.get_metadata("logical_axes") if variable.has_metadata("logical_axes") else None
        return tuple(logical) if logical is not None else (None,) * variable.get_value().ndim

    return nnx.to_pure_dict(jax.tree.map(axes, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def param_shardings(state: nnx.State, mesh) -> dict:
    """Pure dict of NamedShardings for the parameters of ``state`` (an ``nnx.State`` of Variables)."""
    def one(variable):
        value = variable.get_value()
        logical = variable.get_metadata("logical_axes") if variable.has_metadata("logical_axes") else None
        if logical is None:
            return NamedSharding(mesh, P())
        return param_sharding(value.shape, logical, mesh)

    return nnx.to_pure_dict(jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def _key_tuple(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def mirror_shardings(tree, params_shardings: dict, mesh):
    """Shardings for ``tree`` (e.g. optimizer state, abstract or concrete): parameter-shaped subtrees
    take the parameters' shardings (matched by key-path suffix and shape), the rest is replicated."""
    by_path = {_key_tuple(p): s for p, s in jax.tree_util.tree_leaves_with_path(params_shardings)}
    lengths = sorted({len(k) for k in by_path}, reverse=True)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = _key_tuple(path)
        for n in lengths:
            if len(keys) >= n and keys[-n:] in by_path:
                return by_path[keys[-n:]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def token_sharding(mesh, shape, leading: int = 0) -> NamedSharding:
    """``[*lead, B, S, ...]``: batch over ``("data", "fsdp")``, sequence over ``("ring", "ulysses")``."""
    logical = (None,) * leading + ("batch", "seq") + (None,) * (len(shape) - leading - 2)
    return NamedSharding(mesh, divisible_spec(shape, mesh_axes_for(logical, mesh), mesh))


def frame_sharding(mesh, shape, leading: int = 0) -> NamedSharding:
    """``[*lead, F, H, W, 3]``: frames over every mesh axis (MM-SP stage 1)."""
    logical = (None,) * leading + ("frames",) + (None,) * (len(shape) - leading - 1)
    spec = mesh_axes_for(logical, mesh)
    if shape[leading] % mesh.size:
        raise ValueError(f"a step holds {shape[leading]} frames, not a multiple of the {mesh.size} devices that "
                         f"encode them; set the data pipeline's frame_multiple (frames_per_batch) to a multiple "
                         f"of {mesh.size}")
    return NamedSharding(mesh, spec)


def batch_shardings(batch: dict, mesh, leading: int = 0) -> dict:
    """Shardings of a step's arrays (``TOKEN_KEYS`` and ``frames``; anything else replicated)."""
    out = {}
    for key, value in batch.items():
        shape = value.shape
        if key == "frames":
            out[key] = frame_sharding(mesh, shape, leading)
        elif len(shape) >= leading + 2 and key in TOKEN_KEYS:
            out[key] = token_sharding(mesh, shape, leading)
        else:
            out[key] = NamedSharding(mesh, P())
    return out


def constrain(x: jax.Array, mesh, logical: tuple) -> jax.Array:
    """``with_sharding_constraint`` of ``x`` to the logical axes ``logical`` (no-op without a mesh)."""
    if mesh is None:
        return x
    spec = divisible_spec(x.shape, mesh_axes_for(logical, mesh), mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
