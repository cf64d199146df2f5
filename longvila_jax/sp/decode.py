"""Decode-step attention over a KV cache that stays sharded along the sequence.

A decode step has a few new queries ``q [B, T, Hq, D]`` (T = 1 usually),
computed on every device.  The prompt's K/V ``[B, S, Hkv, D]`` stay on the
devices that prefilled them, sharded over ``("ring", "ulysses")`` ring major
(as ``sp.attention`` lays them out).  Inside ``shard_map`` each device runs
the single-device kernel on its own slice of the cache, giving a partial
``(out, lse)``; the partials (``[B, T, Hq, D]`` and ``[B, Hq, T]``, tiny) are
all-gathered over the sequence axes and folded with
``kernels.merge_partials`` in rank order, so every device ends with the same
float32 result.  The cache itself never moves.

The replicated ``local`` block (K/V of generated tokens, the new ones
included) is attended on every device and merged last.  The mask is the
project's: ``segment_id`` equal and non-zero, ``kv_position <= q_position``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from longvila_jax import kernels
from longvila_jax.sharding import BATCH_AXES, SEQUENCE_AXES, divisible_spec

MAX_TILE = 2 ** 25  # elements of one [T * Hq, block_k] score tile: one key block covers a decode shard


def _block_k(kv_len: int, q_len: int, q_heads: int) -> int:
    """The largest key tile that divides ``kv_len`` (no padding copy of the cache) and fits ``MAX_TILE``."""
    cap = max(1, MAX_TILE // (q_len * q_heads))
    if kv_len <= cap:
        return kv_len
    return math.gcd(kv_len, 1 << (cap.bit_length() - 1))


def _partial(q, q_seg, q_pos, k, v, kv_seg, kv_pos, *, scale, impl):
    """Attention of ``q`` over one K/V block: float32 ``(out [B, T, Hq, D], lse [B, Hq, T])``."""
    return kernels.flash_attention(
        q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos,
        causal=True, scale=scale, impl=impl, block_q=q.shape[1], block_k=_block_k(k.shape[1], q.shape[1], q.shape[2]))


def _merge_over_shards(out, lse, axes: tuple[str, ...], count: int):
    """All-gathers the partials of the ``count`` shards over ``axes`` and folds them in rank order."""
    outs = lax.all_gather(out, axes)
    lses = lax.all_gather(lse, axes)
    merged_out, merged_lse = outs[0].astype(jnp.float32), lses[0]
    for i in range(1, count):
        merged_out, merged_lse = kernels.merge_partials(merged_out, merged_lse, outs[i], lses[i])
    return merged_out, merged_lse


def sequence_shards(mesh) -> tuple[tuple[str, ...], int]:
    """The mesh axes the sequence is sharded over (size > 1) and the number of shards."""
    if mesh is None:
        return (), 1
    axes = tuple(a for a in SEQUENCE_AXES if mesh.shape.get(a, 1) > 1)
    return axes, math.prod(mesh.shape[a] for a in axes)


def cached_attention(q, *, segment_ids, positions, sharded, local, mesh=None, impl="xla", scale=None):
    """Attention of new tokens over a sequence-sharded cache block and a replicated one.

    Args:
      q: ``[B, T, Hq, D]`` queries of the new tokens (after RoPE).
      segment_ids, positions: int ``[B, T]`` of the new tokens.
      sharded: ``(k, v, segment_ids, positions)`` of the prompt, k/v
        ``[B, S, Hkv, D]``, sharded along S over ``("ring", "ulysses")``;
        ``S`` must divide by the number of sequence shards.
      local: ``(k, v, segment_ids, positions)`` ``[B, M, ...]`` replicated
        (the generated tokens, the new ones already written).
      mesh: None (one device) or the mesh the cache lives on.
      impl: the kernel backend.  ``xla`` by default: with few queries one
        key tile spans a whole shard (``MAX_TILE``), so the blockwise kernel
        is one fused, memory-bound pass; the fused GPU kernels are tuned for
        long query blocks.

    Returns ``[B, T, Hq, D]`` in q's dtype.  Call inside ``jax.jit``.
    """
    seg, pos = segment_ids.astype(jnp.int32), positions.astype(jnp.int32)
    attend = functools.partial(_partial, scale=scale, impl=impl)
    seq_axes, shards = sequence_shards(mesh)
    batch_axes = tuple(a for a in BATCH_AXES if mesh is not None and mesh.shape.get(a, 1) > 1)
    length = sharded[0].shape[1]
    if length % shards:
        raise ValueError(f"cached_attention: the sharded cache holds {length} tokens, which does not divide over "
                         f"{shards} sequence shards; pad the prompt to a multiple of {shards}")
    if not seq_axes and not batch_axes:
        out, lse = attend(q, seg, pos, *sharded)
    else:
        batch_spec = divisible_spec((q.shape[0],), P(batch_axes or None), mesh)[0]
        rows, cache = P(batch_spec), P(batch_spec, seq_axes or None)

        def per_shard(q, seg, pos, k, v, kv_seg, kv_pos):
            out, lse = attend(q, seg, pos, k, v, kv_seg, kv_pos)
            return _merge_over_shards(out, lse, seq_axes, shards) if seq_axes else (out, lse)

        out, lse = jax.shard_map(
            per_shard, mesh=mesh, in_specs=(rows, rows, rows, cache, cache, cache, cache), out_specs=(rows, rows),
            check_vma=False,
        )(q, seg, pos, *sharded)
    local_out, local_lse = attend(q, seg, pos, *local)
    out, _ = kernels.merge_partials(out, lse, local_out, local_lse)
    return out.astype(q.dtype)


__all__ = ["cached_attention", "sequence_shards"]
