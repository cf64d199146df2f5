"""Bytes each device sends per attention layer, forward and backward, from shapes.

Notation: B = local batch rows per data-parallel group, S = sequence length,
R = ring size, U = Ulysses size, n = S/(R*U) tokens per device,
m = S/R tokens per ring member, Hkv' = lcm(Hkv, U) K/V heads after the
Ulysses repeat (``ulysses.kv_head_repeats``), b = bytes per activation
element, ids and positions int32.

Ulysses (U > 1), per device, an all-to-all keeps 1/U of its input:
  forward:  q, k, v seq->heads and out heads->seq:
            ``(U-1)/U * B*n*D*b * (2*Hq + 2*Hkv')``, plus the all-gather of
            ids and positions ``(U-1) * B*n*8``;
  backward: dout seq->heads, dq, dk, dv heads->seq: the same head bytes
            (the forward's head-sharded q, k, v, out are saved residuals).
Ring (R > 1), per device, with ``Hkv'/U`` K/V heads per ring member:
  forward:  R-1 sends of K, V, ids, positions: ``(R-1) * B*m*(2*(Hkv'/U)*D*b + 8)``;
  backward: the same R-1 sends again, plus R sends of the float32 dK, dV
            accumulators: ``R * B*m*2*(Hkv'/U)*D*4``.
"""

from __future__ import annotations

import dataclasses

from longvila_jax.sp.ulysses import kv_head_repeats

TOKEN_BYTES = 8  # int32 segment id + int32 position
GRAD_BYTES = 4  # dK/dV accumulators travel in float32


@dataclasses.dataclass(frozen=True)
class CommBytes:
    """Bytes one device sends in one attention layer."""

    ulysses_forward: int
    ulysses_backward: int
    ring_forward: int
    ring_backward: int

    @property
    def forward(self) -> int:
        return self.ulysses_forward + self.ring_forward

    @property
    def backward(self) -> int:
        return self.ulysses_backward + self.ring_backward

    @property
    def total(self) -> int:
        return self.forward + self.backward


def comm_bytes(*, batch: int, seq_len: int, q_heads: int, kv_heads: int, head_dim: int,
               ring: int, ulysses: int, dtype_bytes: int = 2) -> CommBytes:
    """Per-device bytes sent by ``sp.attention`` for one layer (see module doc)."""
    if seq_len % (ring * ulysses):
        raise ValueError(f"sequence length {seq_len} must divide by ring * ulysses = {ring * ulysses}")
    if q_heads % ulysses:
        raise ValueError(f"query heads {q_heads} must be divisible by the ulysses size {ulysses}")
    kv_heads_rep = kv_heads * kv_head_repeats(kv_heads, ulysses)
    per_device = seq_len // (ring * ulysses)
    per_member = seq_len // ring
    u_fwd = u_bwd = r_fwd = r_bwd = 0
    if ulysses > 1:
        heads = batch * per_device * head_dim * dtype_bytes * (2 * q_heads + 2 * kv_heads_rep)
        u_fwd = heads * (ulysses - 1) // ulysses + (ulysses - 1) * batch * per_device * TOKEN_BYTES
        u_bwd = heads * (ulysses - 1) // ulysses
    if ring > 1:
        ring_kv_heads = kv_heads_rep // ulysses
        kv_send = batch * per_member * (2 * ring_kv_heads * head_dim * dtype_bytes + TOKEN_BYTES)
        r_fwd = (ring - 1) * kv_send
        r_bwd = (ring - 1) * kv_send + ring * batch * per_member * 2 * ring_kv_heads * head_dim * GRAD_BYTES
    return CommBytes(u_fwd, u_bwd, r_fwd, r_bwd)
