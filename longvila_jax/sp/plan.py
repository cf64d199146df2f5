"""A simple time model of one attention layer (forward + backward) per (ring, ulysses).

Model, per device, for ``P = R*U`` devices sharing one sequence:

* compute: ``flops / P / kernel_tflops``, with causal flops
  ``3.5 * 4*B*S^2*Hq*D / 2`` (forward + backward, ANCHORS.md convention);
  the balanced order gives every device the same share.
* Ulysses: its all-to-alls are not overlapped: ``bytes / ulysses_bw``.
* Ring: R steps per pass; step t's K/V transfer hides behind step t-1's
  compute up to ``overlap`` (1 = fully hidden):
  ``step = compute/R + max(0, send/ring_bw - overlap*compute/R)``, and the
  final dK/dV send of the backward is exposed.
* Merges: the ring's float32 accumulators (out and lse forward; dQ, dK, dV
  backward) are read and written once per step, at ``hbm_bw``; not hidden.
* Links: Ulysses sits inside a host (``intra_bw``) when U divides the
  devices per host, else it pays ``inter_bw``; the ring runs at ``intra_bw``
  when the whole group fits one host, else at ``inter_bw`` (its slowest hop).

Bandwidths are GB/s sent per device: ``intra_bw`` point-to-point inside a
host, ``intra_a2a_bw`` all-to-all inside a host (default ``intra_bw``),
``inter_bw`` across hosts (ANCHORS.md, 2x H200 NVLink: JAX ppermute 346,
all_to_all 285).
"""

from __future__ import annotations

import dataclasses

from longvila_jax.sp.accounting import comm_bytes
from longvila_jax.sp.ulysses import kv_head_repeats


@dataclasses.dataclass(frozen=True)
class Prediction:
    ring: int
    ulysses: int
    seconds: float
    compute_s: float
    ulysses_s: float
    ring_exposed_s: float
    merge_s: float
    flops_per_device: float

    @property
    def tflops_per_device(self) -> float:
        return self.flops_per_device / self.seconds / 1e12


def attention_flops(*, batch, seq_len, q_heads, head_dim, causal=True, backward=True) -> float:
    """Model FLOPs of one attention layer (ANCHORS.md convention)."""
    flops = 4.0 * batch * seq_len ** 2 * q_heads * head_dim * (0.5 if causal else 1.0)
    return flops * (3.5 if backward else 1.0)


def predict(*, ring, ulysses, batch, seq_len, q_heads, kv_heads, head_dim, devices_per_host,
            kernel_tflops, intra_bw, inter_bw, intra_a2a_bw=None, overlap=1.0, causal=True,
            dtype_bytes=2, hbm_bw=3350.0) -> Prediction:
    """Predicted forward+backward seconds of one attention layer on ``ring*ulysses`` devices."""
    devices = ring * ulysses
    flops = attention_flops(batch=batch, seq_len=seq_len, q_heads=q_heads, head_dim=head_dim,
                            causal=causal) / devices
    compute = flops / (kernel_tflops * 1e12)
    sent = comm_bytes(batch=batch, seq_len=seq_len, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                      ring=ring, ulysses=ulysses, dtype_bytes=dtype_bytes)
    u_bw = (intra_a2a_bw or intra_bw) if devices_per_host % ulysses == 0 else inter_bw
    r_bw = intra_bw if devices <= devices_per_host else inter_bw
    ulysses_s = (sent.ulysses_forward + sent.ulysses_backward) / (u_bw * 1e9)
    ring_exposed = merge = 0.0
    if ring > 1:
        tokens = batch * seq_len // ring
        q_elems = tokens * q_heads // ulysses * head_dim
        kv_elems = tokens * kv_heads * kv_head_repeats(kv_heads, ulysses) // ulysses * head_dim
        # per step: out acc f32 read+write + partial read; dq acc f32 r+w; dk/dv f32 r+w + partials
        merge_bytes = q_elems * (8 + dtype_bytes) + q_elems * 8 + 2 * kv_elems * (8 + dtype_bytes)
        merge = ring * merge_bytes / (hbm_bw * 1e9)
        fwd_compute_step = compute / 3.5 / ring
        bwd_compute_step = compute * 2.5 / 3.5 / ring
        kv_send = sent.ring_forward / (ring - 1) / (r_bw * 1e9)
        dkv_send = (sent.ring_backward - sent.ring_forward) / ring / (r_bw * 1e9)
        ring_exposed += (ring - 1) * max(0.0, kv_send - overlap * fwd_compute_step)
        ring_exposed += (ring - 1) * max(0.0, kv_send + dkv_send - overlap * bwd_compute_step)
        ring_exposed += dkv_send  # the last dK/dV send has no compute after it
    seconds = compute + ulysses_s + ring_exposed + merge
    return Prediction(ring=ring, ulysses=ulysses, seconds=seconds, compute_s=compute, ulysses_s=ulysses_s,
                      ring_exposed_s=ring_exposed, merge_s=merge, flops_per_device=flops)


def candidates(devices: int, q_heads: int, seq_len: int) -> list[tuple[int, int]]:
    """(ring, ulysses) pairs with ring*ulysses == devices that the shapes allow."""
    out = []
    for ulysses in range(1, devices + 1):
        if devices % ulysses or q_heads % ulysses:
            continue
        ring = devices // ulysses
        if seq_len % (2 * ring * ulysses):
            continue
        out.append((ring, ulysses))
    return out


def recommend(*, devices, **kwargs) -> list[Prediction]:
    """All valid (ring, ulysses) predictions, fastest first."""
    preds = [predict(ring=r, ulysses=u, **kwargs)
             for r, u in candidates(devices, kwargs["q_heads"], kwargs["seq_len"])]
    if not preds:
        raise ValueError(f"no (ring, ulysses) with ring*ulysses = {devices} fits q_heads={kwargs['q_heads']} "
                         f"and seq_len={kwargs['seq_len']}")
    return sorted(preds, key=lambda p: (p.seconds, p.ring))
