"""The Mosaic GPU forward and dQ kernels on a persistent grid against one CTA per block, interleaved.

    python scripts/bench_mosaic_grid.py --seqs 8192 --masks causal,causal-packed4 --rounds 3

Shapes as in ``bench_attention.py`` (B=1, Hq=32, Hkv=8, D=128, bf16). Per (S, mask) every variant
is compiled first, then timed once per round, in turn, so that a slow drift of the device's clock
hits all of them alike: the forward kernel and the dQ kernel alone (visit lists given), the whole
forward+backward of ``flash_attention`` with both kernels persistent, both on one CTA per block, the
backend's default pair, both persistent with dQ stored from registers, and the default forward with a
persistent dQ on 64-key blocks that prefetches its next item (``CONFIGS``), and JAX cuDNN's on the plain
masks. The dQ kernel alone runs with each way its result leaves (``DQ_STORES``), and on 64-key blocks per
block, persistent, and persistent with the next item prefetched (``DQ_64``).
Printed: each round's ms, then the median, TFLOP/s and, for forward+backward, the ratio to
cuDNN (plain masks) or to the same grid's plain mask (packed masks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402
from bench_mosaic_kernels import case  # noqa: E402

from longvila_jax.kernels import mosaic_backend as mb  # noqa: E402
from longvila_jax.kernels import mosaic_common as mc  # noqa: E402
from longvila_jax.kernels import mosaic_backward as mbw  # noqa: E402
from longvila_jax.kernels import mosaic_forward as mfw  # noqa: E402


# forward+backward rows: (grids, how dQ leaves its kernel, dQ tuning (None: the default), dQ prefetch)
DQ_64 = mc.Tuning(block=64, stages=2)
CONFIGS = {"persistent": (dict(forward="persistent", dq="persistent"), "smem", None, "off"),
           "blocks": (dict(forward="blocks", dq="blocks"), "smem", None, "off"),
           "default": (mb.DEFAULT_GRID, "smem", None, "off"),
           "persistent, dQ from registers": (dict(forward="persistent", dq="persistent"), "registers", None, "off"),
           "persistent, dQ 64-key, next item": (dict(forward="persistent", dq="persistent"), "smem", DQ_64,
                                                "next_item")}


def variants(seq_len, mask):
    """``[(name, grid or None, work in forward FLOPs, jitted, args)]`` of one (S, mask)."""
    causal = mask.startswith("causal")
    n_segments = 4 if mask.endswith("packed4") else 1
    (q, k, v, masks), tensors, plan = case(seq_len, causal, n_segments, jax.random.key(seq_len + n_segments))
    kw = dict(causal=causal, scale=ba.HEAD_DIM ** -0.5)
    forward_lists = plan.per_query_block(mb.TUNING["forward"].block)
    query_lists = plan.per_query_block(mb.TUNING["dq"].block)
    dout = tensors[3]
    tokens = (masks[0], masks[2]) if n_segments > 1 else ()  # segment ids, positions: arguments, as in training
    out = []
    for grid in mb.GRID_MODES:  # each kernel alone on each grid
        mb.set_grid(grid)
        forward = jax.jit(lambda q, k, v, w=mb.workers("forward"): mfw.forward(
            q, k, v, plan.q_tokens, plan.kv_tokens, forward_lists, tuning=mb.TUNING["forward"], workers=w, **kw))
        out.append(("forward kernel", grid, 1.0, forward, (q, k, v)))
        for store in mbw.DQ_STORES:
            dq = jax.jit(lambda *t, w=mb.workers("dq"), store=store: mbw.dq(
                *t, query_lists, tuning=mb.TUNING["dq"], workers=w, store=store, loop=mb.DQ_LOOP["mode"], **kw))
            out.append(("dQ kernel" + (", from registers" if store == "registers" else ""), grid, 1.5, dq, tensors))
    lists_64 = plan.per_query_block(DQ_64.block)
    for grid, prefetch in (("blocks", False), ("persistent", False), ("persistent", True)):
        mb.set_grid(grid, "dq")
        dq = jax.jit(lambda *t, w=mb.workers("dq"), prefetch=prefetch: mbw.dq(
            *t, lists_64, tuning=DQ_64, workers=w, loop=mb.DQ_LOOP["mode"], prefetch=prefetch, **kw))
        out.append(("dQ kernel, 64-key blocks" + (", next item" if prefetch else ""), grid, 1.5, dq, tensors))
    saved_tuning = dict(mb.TUNING)
    for name, (grids, store, dq_tuning, prefetch) in CONFIGS.items():  # the whole forward+backward
        mb.GRID.update(grids)
        mb.set_dq_store(store)
        mb.TUNING["dq"] = dq_tuning or saved_tuning["dq"]
        mb.set_dq_prefetch(prefetch)
        f = ba.attention_fn("mosaic", causal, n_segments, 0, 0)
        whole = jax.jit(ba.fwd_bwd_fn(f))
        jax.block_until_ready(whole(q, k, v, dout, *tokens))  # traced and compiled under these settings
        out.append(("forward+backward", name, 3.5, whole, (q, k, v, dout, *tokens)))
    mb.GRID.update(mb.DEFAULT_GRID)
    mb.set_dq_store("smem")
    mb.TUNING.update(saved_tuning)
    mb.set_dq_prefetch("off")
    if mask == mask.split("-")[0]:
        f = ba.attention_fn("jax-cudnn", causal, 1, 0, 0)
        whole = jax.jit(lambda q, k, v, dout: jax.vjp(f, q, k, v)[1](dout))
        out.append(("forward+backward", "cudnn", 3.5, whole, (q, k, v, dout)))
    return out, ba.forward_flops(seq_len, causal, n_segments)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="8192")
    parser.add_argument("--masks", default="causal,causal-packed4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=0.5, help="timing budget per variant and round")
    args = parser.parse_args()
    ba.TIMING["mode"] = "async"
    print(f"# device: {jax.devices()[0].device_kind}; jax {jax.__version__}; tuning {mb.TUNING}; "
          f"default grids {mb.DEFAULT_GRID}; {args.rounds} rounds, async timing")
    print("| S | mask | variant | grid | ms per round | median ms | TFLOP/s | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    plain_rate = {}
    for seq_len in (int(s) for s in args.seqs.split(",")):
        for mask in args.masks.split(","):
            runs, flops = variants(seq_len, mask)
            times = [[] for _ in runs]
            for _ in range(args.rounds):
                for t, (_, _, _, fn, fargs) in zip(times, runs):
                    t.append(ba.time_call(fn, *fargs, budget_s=args.budget_s))
            rates = {}
            for t, (name, grid, work, _, _) in zip(times, runs):
                median = statistics.median(t)
                rate = work * flops / median / 1e12
                if name == "forward+backward":
                    rates[grid] = rate
                rounds = " / ".join(f"{x * 1e3:.3f}" for x in t)
                ratio = "-"
                if name == "forward+backward" and grid != "cudnn":
                    if mask == mask.split("-")[0]:
                        plain_rate[(seq_len, mask, grid)] = rate
                    base = plain_rate.get((seq_len, mask.split("-")[0], grid))
                    ratio = f"{rate / base:.2f} own plain" if mask != mask.split("-")[0] and base else "-"
                print(f"| {seq_len} | {mask} | {name} | {grid} | {rounds} | {median * 1e3:.3f} | {rate:.1f} "
                      f"| {ratio} |", flush=True)
            if "cudnn" in rates:
                for grid in CONFIGS:
                    print(f"# {seq_len} {mask}: {grid} fwd+bwd / cuDNN = {rates[grid] / rates['cudnn']:.2f}")


if __name__ == "__main__":
    main()
