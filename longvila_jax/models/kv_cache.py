"""The KV cache of generation: the prompt's keys/values plus a small buffer of generated ones.

Two blocks, both scan-friendly (a leading ``layers`` axis on K/V):

* ``prompt``: K/V of the prefilled prompt, ``[L, B, S, Hkv, D]``, in the
  prompt's device order, sharded along ``S`` over the devices that computed
  it (never moved); ``segment_ids``/``positions`` ``[B, S]`` int32 (0 =
  padding, never attended).
* ``recent``: K/V of generated tokens, ``[L, B, M, Hkv, D]``; decode step
  ``t`` writes slot ``t``.  Every device computes the new token, so this block
  is replicated over the sequence axes; ``segment_ids`` 0 marks empty slots.

Keys are stored after RoPE.  Which key a query sees follows the project's
mask from ``segment_ids`` and ``positions`` alone, so the slot order never
matters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVBlock(NamedTuple):
    """K/V ``[L, B, S, Hkv, D]`` (``[B, S, Hkv, D]`` inside the layer scan), ids/positions ``[B, S]``."""

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    positions: jax.Array


class KVCache(NamedTuple):
    """The prompt block (sequence-sharded) and the recent block (replicated)."""

    prompt: KVBlock
    recent: KVBlock

    @property
    def capacity(self) -> int:
        """Generated tokens the recent block can hold (``M``)."""
        return self.recent.k.shape[2]


def empty_block(like: KVBlock, length: int) -> KVBlock:
    """A block of ``length`` empty slots (segment 0) with the layers, batch, heads and dtype of ``like``."""
    layers, batch, _, heads, dim = like.k.shape
    kv = lambda: jnp.zeros((layers, batch, length, heads, dim), like.k.dtype)  # noqa: E731
    ids = lambda: jnp.zeros((batch, length), jnp.int32)  # noqa: E731
    return KVBlock(kv(), kv(), ids(), ids())  # four buffers: the cache is donated to each decode step


def write_tokens(block: KVBlock, step, *, segment_ids, positions) -> KVBlock:
    """Writes the ids/positions ``[B, T]`` of ``T`` new tokens at slots ``[step, step + T)``."""
    start = (0, jnp.asarray(step, jnp.int32))
    return block._replace(
        segment_ids=jax.lax.dynamic_update_slice(block.segment_ids, segment_ids.astype(jnp.int32), start),
        positions=jax.lax.dynamic_update_slice(block.positions, positions.astype(jnp.int32), start))
