"""Recommend (ring, ulysses) for sequence-parallel attention and predict its time.

Example (the two-GPU anchor of ANCHORS.md):

  python scripts/sp_plan.py --heads 32 --kv-heads 32 --seq 131072 \
      --devices-per-host 2 --hosts 1 --kernel-tflops 552 --intra-bw 346 --intra-a2a-bw 285

Prints, for every valid (ring, ulysses), the bytes each device sends per
layer (forward, backward), the predicted forward+backward time of one
attention layer and the TFLOP/s per device, fastest first (model in
``longvila_jax.sp.plan``).  With ``--compare-anchor`` it also prints the
measured two-GPU figures from ANCHORS.md next to the prediction.
"""

from __future__ import annotations

import argparse

from longvila_jax.sp.accounting import comm_bytes
from longvila_jax.sp.plan import recommend

# ANCHORS.md, 2x H200 NVLink, causal MHA 32 heads, D=128, fwd+bwd, TFLOP/s per GPU.
MEASURED_TWO_GPU = {
    65536: ("PyTorch context_parallel + SDPA cuDNN, S=64k", 495.0),
    131072: ("PyTorch context_parallel + SDPA cuDNN, S=128k", 514.5),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, required=True, help="query heads")
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seq", type=int, required=True, help="global sequence length (tokens)")
    ap.add_argument("--batch", type=int, default=1, help="rows per sequence-parallel group")
    ap.add_argument("--devices-per-host", type=int, required=True)
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--sp-devices", type=int, default=None,
                    help="devices sharing one sequence (default: all); the rest is data parallel")
    ap.add_argument("--kernel-tflops", type=float, required=True,
                    help="single-device causal fwd+bwd attention TFLOP/s at the per-device size")
    ap.add_argument("--intra-bw", type=float, default=346.0, help="GB/s sent per device, point-to-point, in a host")
    ap.add_argument("--intra-a2a-bw", type=float, default=285.0, help="GB/s sent per device, all-to-all, in a host")
    ap.add_argument("--inter-bw", type=float, default=50.0, help="GB/s sent per device across hosts")
    ap.add_argument("--overlap", type=float, default=1.0, help="fraction of ring transfers hidden by compute")
    ap.add_argument("--hbm-bw", type=float, default=3350.0, help="GB/s device memory (ring merges)")
    ap.add_argument("--dtype-bytes", type=int, default=2)
    ap.add_argument("--no-causal", action="store_true")
    ap.add_argument("--compare-anchor", action="store_true")
    args = ap.parse_args(argv)

    devices = args.sp_devices or args.devices_per_host * args.hosts
    preds = recommend(devices=devices, batch=args.batch, seq_len=args.seq, q_heads=args.heads,
                      kv_heads=args.kv_heads, head_dim=args.head_dim, devices_per_host=args.devices_per_host,
                      kernel_tflops=args.kernel_tflops, intra_bw=args.intra_bw, intra_a2a_bw=args.intra_a2a_bw,
                      inter_bw=args.inter_bw, overlap=args.overlap, causal=not args.no_causal,
                      dtype_bytes=args.dtype_bytes, hbm_bw=args.hbm_bw)
    print(f"{devices} devices, S={args.seq}, heads {args.heads}/{args.kv_heads}, D={args.head_dim}, "
          f"kernel {args.kernel_tflops} TFLOP/s")
    print(f"{'ring':>4} {'ulys':>4} {'fwd MiB':>9} {'bwd MiB':>9} {'compute ms':>10} {'a2a ms':>8} "
          f"{'ring exp ms':>11} {'merge ms':>8} {'total ms':>9} {'TFLOP/s/dev':>11}")
    for p in preds:
        sent = comm_bytes(batch=args.batch, seq_len=args.seq, q_heads=args.heads, kv_heads=args.kv_heads,
                          head_dim=args.head_dim, ring=p.ring, ulysses=p.ulysses, dtype_bytes=args.dtype_bytes)
        print(f"{p.ring:>4} {p.ulysses:>4} {sent.forward / 2**20:>9.1f} {sent.backward / 2**20:>9.1f} "
              f"{p.compute_s * 1e3:>10.2f} {p.ulysses_s * 1e3:>8.2f} {p.ring_exposed_s * 1e3:>11.2f} "
              f"{p.merge_s * 1e3:>8.2f} "
              f"{p.seconds * 1e3:>9.2f} {p.tflops_per_device:>11.1f}")
    best = preds[0]
    print(f"recommended: ring={best.ring} ulysses={best.ulysses} "
          f"({best.seconds * 1e3:.2f} ms per layer fwd+bwd, {best.tflops_per_device:.1f} TFLOP/s per device)")
    anchor_shape = args.heads == args.kv_heads == 32 and args.head_dim == 128 and devices == 2
    if args.compare_anchor and anchor_shape and args.seq in MEASURED_TWO_GPU:
        name, measured = MEASURED_TWO_GPU[args.seq]
        print(f"measured anchor: {name}: {measured:.1f} TFLOP/s per GPU; "
              f"model/measured = {best.tflops_per_device / measured:.3f}")
    return preds


if __name__ == "__main__":
    main()
