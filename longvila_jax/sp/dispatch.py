"""``sp.attention``: the one attention entry of the model code.

The scheme follows from the sizes of the mesh's ``ring`` (R) and ``ulysses``
(U) axes (an absent axis counts as size 1):

=====  =====  ==================================================
R      U      scheme (per device, inside ``shard_map``)
=====  =====  ==================================================
1      1      the single-device kernel (no batch axes: no shard_map)
>1     1      ring (``sp.ring``)
1      >1     Ulysses around the kernel (``sp.ulysses``)
>1     >1     Ulysses inside each ring member, ring across (2D)
=====  =====  ==================================================

"The kernel" is ``ring.ring_attention`` with ``ring_size=1``: the kernel's
forward and its given-lse backward under one custom VJP, with no collective,
so that every scheme saves the same named residuals (``ring.OUT_NAME``,
``ring.LSE_NAME``) for remat policies.

Layout: global arrays, the sequence sharded over ``("ring", "ulysses")``
ring major, the batch over those of ``("data", "fsdp")`` that the mesh has
and that divide B (as ``sharding.divisible_spec`` does; an axis that does
not divide B replicates the batch and repeats the work).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from longvila_jax.kernels import flash_attention
from longvila_jax.sharding import BATCH_AXES, SEQUENCE_AXES, divisible_spec
from longvila_jax.sp.ring import ring_attention
from longvila_jax.sp.ulysses import ulysses_attention


def _per_device(ring_size, ulysses_size, *, causal, scale, impl):
    """The per-device attention of the table above: f(q, k, v, ids, pos) -> out."""
    inner = functools.partial(ring_attention, ring_size=ring_size, causal=causal, scale=scale, impl=impl)
    if ulysses_size > 1:
        return functools.partial(ulysses_attention, inner, ulysses_size=ulysses_size)
    return inner


def axis_sizes(mesh) -> tuple[int, int]:
    """``(ring, ulysses)`` sizes of ``mesh`` (1 for an absent axis or no mesh)."""
    if mesh is None:
        return 1, 1
    return mesh.shape.get("ring", 1), mesh.shape.get("ulysses", 1)


def _check(q, k, v, segment_ids, positions, ring_size, ulysses_size):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"sp.attention: {name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"sp.attention: q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"sp.attention: q [B, S, Hq, D] and k, v [B, S, Hkv, D] disagree: "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    batch, length, q_heads, _ = q.shape
    kv_heads = k.shape[2]
    for name, x in (("segment_ids", segment_ids), ("positions", positions)):
        if x.shape != (batch, length) or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"sp.attention: {name} must be an integer [batch, seq] = {(batch, length)} array, "
                             f"got shape {x.shape} dtype {x.dtype}")
    if q_heads % kv_heads:
        raise ValueError(f"sp.attention: query heads {q_heads} must be a multiple of kv heads {kv_heads}")
    if length % (ring_size * ulysses_size):
        raise ValueError(f"sp.attention: sequence length {length} must divide by ring * ulysses = "
                         f"{ring_size} * {ulysses_size} = {ring_size * ulysses_size}")
    if q_heads % ulysses_size:
        raise ValueError(f"sp.attention: query heads {q_heads} must be divisible by the ulysses axis size "
                         f"{ulysses_size}")


def attention(q, k, v, *, segment_ids, positions, mesh=None, causal=True, impl="auto", scale=None,
              prefix_rows=False):
    """Sequence-parallel attention with the project's mask.

    q ``[B, S, Hq, D]``, k/v ``[B, S, Hkv, D]``, segment_ids/positions int32
    ``[B, S]`` (global arrays, any device order) -> out ``[B, S, Hq, D]``.
    Query i attends key j iff ``segment_ids[i] == segment_ids[j] != 0`` and,
    when causal, ``positions[j] <= positions[i]``; padding rows give 0.

    ``mesh``: None, or a mesh with any of the axes ``data, fsdp, ring,
    ulysses`` (absent = size 1); S must divide by ring*ulysses and Hq by
    ulysses.  ``impl``: the kernel backend (``kernels.flash_attention``).
    ``scale``: default ``1/sqrt(D)``.  Call it inside ``jax.jit``; it opens
    its own ``shard_map``.

    ``prefix_rows``: the caller promises every row is in natural order, its
    real tokens first (one segment, positions ``0..L-1``) and padding after.
    With ``causal`` and no sequence parallelism the plain causal kernel then
    serves (cuDNN on GPU, which has no segment masks): exact for the real
    tokens, while padding rows get finite values instead of 0.  Ignored
    otherwise.
    """
    ring_size, ulysses_size = axis_sizes(mesh)
    _check(q, k, v, segment_ids, positions, ring_size, ulysses_size)
    segment_ids = segment_ids.astype(jnp.int32)
    positions = positions.astype(jnp.int32)
    batch_axes = tuple(a for a in BATCH_AXES if mesh is not None and mesh.shape.get(a, 1) > 1)
    if prefix_rows and causal and ring_size == ulysses_size == 1:
        per_device = lambda q, k, v, *_: flash_attention(q, k, v, causal=True, scale=scale, impl=impl)[0]  # noqa: E731
    else:
        per_device = _per_device(ring_size, ulysses_size, causal=causal, scale=scale, impl=impl)
    if ring_size == ulysses_size == 1 and not batch_axes:
        return per_device(q, k, v, segment_ids, positions)  # no collectives: no shard_map needed
    batch_spec = divisible_spec((q.shape[0],), P(batch_axes or None), mesh)[0]
    seq_spec = tuple(a for a in SEQUENCE_AXES if a in mesh.shape) or None
    token_spec = P(batch_spec, seq_spec)
    head_spec = P(batch_spec, seq_spec, None, None)
    # check_vma=False: the single-device kernels build loop carries from fresh
    # zeros and know nothing of manual axes; every collective here is explicit.
    return jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(head_spec, head_spec, head_spec, token_spec, token_spec), out_specs=head_spec,
        check_vma=False,
    )(q, k, v, segment_ids, positions)


__all__ = ["attention", "axis_sizes"]
