"""Each Mosaic GPU attention kernel timed alone: where the forward+backward's time goes.

    python scripts/bench_mosaic_kernels.py                 # S = 8k causal, 32k causal and full
    python scripts/bench_mosaic_kernels.py --seqs 8192 --dq-write-variants
    python scripts/bench_mosaic_kernels.py --seqs 8192 --masks causal-packed4 --exp-ablation --rounds 5

Shapes as in ``bench_attention.py`` (B=1, Hq=32, Hkv=8, D=128, bf16). Per (S, mask): the forward,
the dK/dV and dQ kernels of the split backward, and the fused backward (``dq_thread``: dQ added inside
the dK/dV kernel by its memory thread), in ms and in TFLOP/s of the kernel's own work (forward 1x,
dK/dV 2x, dQ 1.5x, fused 2.5x the forward's FLOPs). ``--dq-write-variants`` also times the fused
kernel with its dQ write replaced: stored to SMEM only, nothing, a plain TMA store instead of the
reduce-add (these three give wrong results: an experiment on where the fused kernel's time goes), and
atomic adds straight from the staged values (``red.global.add.f32``; right results).
``--exp-ablation`` times the forward, dK/dV and dQ kernels with every ``exp2`` replaced by one
multiply-add (wrong results): how much of each kernel's time the exponentials' unit (MUFU) holds.
``--kv-ablation`` times the forward kernel with every visit list naming key block 0 (the same K/V
for every item and step: no L2 misses, the same copies from L2 to SMEM) and with K/V copied only for
an item's first ``stages`` blocks (later steps reuse the SMEM slots: no copies at all; wrong results):
how much of the forward's time the K/V stream from HBM and from L2 holds. The
last column: the largest error of the fused variants' dq, dk, dv relative to the split kernels'.
Without ``--rounds`` each variant is timed alone, one after another, and the GPU's clock drifts between
them (run BN: 5-18% at 0.4-0.8 ms); ``--rounds N`` compiles them all, then times them in N interleaved
rounds (medians), as ``bench_attention.py --rounds`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention  # noqa: E402
from bench_attention import (BATCH, HEAD_DIM, KV_HEADS, Q_HEADS, batch_size, forward_flops,  # noqa: E402
                             packed_tokens, rel_err, time_batch, time_call)

from longvila_jax.kernels import mosaic_backend as mb  # noqa: E402
from longvila_jax.kernels import mosaic_backward as mbw  # noqa: E402
from longvila_jax.kernels import mosaic_common as mc  # noqa: E402
from longvila_jax.kernels import mosaic_forward as mfw  # noqa: E402
from longvila_jax.kernels import mosaic_plan  # noqa: E402
from longvila_jax.kernels.row_stats import softmax_delta  # noqa: E402


@contextlib.contextmanager
def replaced(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def store_only(value, smem, gmem, **_):
    smem[...] = value
    plgpu.commit_smem()


def no_write(value, smem, gmem, **_):
    del value, smem, gmem


def plain_store(value, smem, gmem, in_flight=0):
    plgpu.wait_smem_to_gmem(in_flight, wait_read_only=True)
    smem[...] = value
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(smem, gmem)


def exp2_as_fma(x):
    """A stand-in for ``exp2`` that costs one FMA instead of a MUFU ``ex2`` (wrong values, same data
    flow: timing only)."""
    return x * 0.5 + 0.5


EXP_ABLATION = (jnp, "exp2", exp2_as_fma)


def kv_loaded_once(stages: int):
    """A stand-in for ``mosaic_common.key_block_issuers`` that copies an item's first ``stages`` key
    blocks and, for the later ones, only arrives on their barriers, so the compute threads reuse
    the SMEM slots (wrong values, the same synchronization: timing only)."""
    copying = mc.key_block_issuers

    def issuers(kv_block, gmem, smem, bars, group, separate_v=False):
        real = copying(kv_block, gmem, smem, bars, group, separate_v)
        parts = ((0, 1), (2,)) if separate_v else ((0, 1, 2),)

        def skipping(issue, own):
            def issue_once(b, h, list_s, j, slot):
                @pl.when(j < stages)
                def _():
                    issue(b, h, list_s, j, slot)

                @pl.when(j >= stages)
                def _():
                    for part in own:
                        plgpu.barrier_arrive(bars[part].at[slot])

            return issue_once

        if separate_v:
            return tuple(skipping(issue, own) for issue, own in zip(real, parts))
        return skipping(real, parts[0])

    return issuers


def atomic_from_registers(value, smem, gmem, **_):
    del smem
    plgpu.atomic_add(gmem, value)


DQ_WRITE_VARIANTS = {"dQ only stored to SMEM": store_only, "no dQ write": no_write,
                     "plain TMA store": plain_store, "red.global.add from registers": atomic_from_registers}


def case(seq_len, causal, n_segments, key):
    """Random q, k, v, dout; the padded backward operands and the plan of one mask (``n_segments``
    packed samples of equal length, 1: the plain mask)."""
    keys = jax.random.split(key, 4)
    q = jax.random.normal(keys[0], (BATCH, seq_len, Q_HEADS, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(keys[1], (BATCH, seq_len, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(keys[2], (BATCH, seq_len, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    seg, pos = packed_tokens(seq_len, n_segments)
    masks = (seg, seg, pos, pos)
    out, lse = jax.jit(lambda q, k, v: mb.attention(q, k, v, *masks, causal=causal, scale=HEAD_DIM ** -0.5))(q, k, v)
    lse2 = jnp.where(jnp.isfinite(lse), lse * mc.LOG2E, jnp.inf)
    stats = jnp.stack([lse2, softmax_delta(out, dout, lse, None)], axis=2)
    plan = mb._Plan(*masks, causal)
    return (q, k, v, masks), (q, k, v, dout, stats, plan.q_tokens, plan.kv_tokens), plan


class Variant(NamedTuple):
    """One timed call: ``fn(*args)``, run with ``patch`` (a ``(name, value)`` of mosaic_common, a
    ``(module, name, value)``, or None) applied, ``work`` its FLOPs in forward units (0: no rate),
    ``fused``: its (dq, dk, dv) are compared with the split kernels'."""
    name: str
    patch: tuple | None
    work: float
    fn: Callable
    args: tuple = ()
    fused: bool = False


def patched(variant: Variant):
    """The context a variant is traced (and timed) in: its patch applied (see ``Variant``)."""
    if not variant.patch:
        return contextlib.nullcontext()
    return replaced(*variant.patch) if len(variant.patch) == 3 else replaced(mc, *variant.patch)


def jitted_call(variant: Variant):
    """A fresh jit of the variant's call (a new function object per variant: jax.jit of one function
    would reuse its first trace and time an unpatched kernel again); trace it inside ``patched``."""
    return jax.jit(lambda *a: variant.fn(*a))


def variants(seq_len, mask, *, key, no_fused=False, overheads=False, cta_overhead="", dq_write_variants=False,
             exp_ablation=False, kv_ablation=False):
    """``(forward FLOPs, [Variant], split_grads)`` of one (S, mask): what ``main`` times, built once
    (``split_grads()``: the split kernels' (dq, dk, dv), the fused rows' reference)."""
    causal = mask.startswith("causal")
    n_segments = 4 if mask.endswith("packed4") else 1
    (q, k, v, masks), tensors, plan = case(seq_len, causal, n_segments, key)
    flops = forward_flops(seq_len, causal, n_segments)
    kw = dict(causal=causal, scale=HEAD_DIM ** -0.5)
    key_lists = plan.per_key_block(mb.TUNING["dkdv"].block)
    query_lists = plan.per_query_block(mb.TUNING["dq"].block)
    forward_lists = plan.per_query_block(mb.TUNING["forward"].block)

    def fused():
        return mb.dq_thread_grads(*tensors, key_lists, **kw)

    def forward_kernel(lists=forward_lists):
        return mfw.forward(q, k, v, plan.q_tokens, plan.kv_tokens, lists, tuning=mb.TUNING["forward"],
                           workers=mb.workers("forward"), **kw)

    def lists(*masks):
        p = mb._Plan(*masks, causal)
        return (p.per_query_block(mb.TUNING["forward"].block), p.per_key_block(mb.TUNING["dkdv"].block),
                p.per_query_block(mb.TUNING["dq"].block))

    def backward_stats(out, dout, lse):
        lse2 = jnp.where(jnp.isfinite(lse), lse * mc.LOG2E, jnp.inf)
        return jnp.stack([lse2, softmax_delta(out, dout, lse, None)], axis=2)

    def dq_kernel(lists=query_lists):
        return mbw.dq(*tensors, lists, tuning=mb.TUNING["dq"], **kw)

    def split_dkdv():
        return mbw.dkdv(*tensors, key_lists, tuning=mb.TUNING["dkdv"], **kw)

    found = [Variant("forward", None, 1.0, lambda: mb.attention(q, k, v, *masks, **kw)),
             Variant("dK/dV (split)", None, 2.0, split_dkdv), Variant("dQ (split)", None, 1.5, dq_kernel)]
    if not no_fused:
        found.append(Variant("fused dK/dV/dQ", None, 2.5, fused, fused=True))
    if overheads:
        # XLA work timed with its inputs as arguments (as constants XLA would fold it at compile time)
        out, lse = jax.jit(forward_kernel)()
        found += [Variant("forward kernel alone", None, 1.0, forward_kernel),
                  Variant("visit lists (3)", None, 0.0, lists, masks),
                  Variant("backward (lse, delta)", None, 0.0, backward_stats, (out, tensors[3], lse))]
    for cut in filter(None, cta_overhead.split(",")):
        def cut_lists(lists, n=int(cut)):
            return lists.at[:, :, 0, 0].set(jnp.minimum(lists[:, :, 0, 0], n))

        found += [Variant(f"forward kernel, lists cut to {cut} tiles", None, 0.0,
                          lambda c=cut_lists(forward_lists): forward_kernel(c)),
                  Variant(f"dQ, lists cut to {cut} tiles", None, 0.0, lambda c=cut_lists(query_lists): dq_kernel(c))]
    if dq_write_variants:
        found += [Variant(f"fused, {name}", ("add_to_gmem", write), 2.5, fused, fused=True)
                  for name, write in DQ_WRITE_VARIANTS.items()]
    if exp_ablation:
        if not overheads:
            found.append(Variant("forward kernel alone", None, 1.0, forward_kernel))
        found += [Variant("forward kernel alone, exp2 as one FMA", EXP_ABLATION, 1.0, forward_kernel),
                  Variant("dK/dV (split), exp2 as one FMA", EXP_ABLATION, 2.0, split_dkdv),
                  Variant("dQ (split), exp2 as one FMA", EXP_ABLATION, 1.5, dq_kernel)]
    if kv_ablation:
        if not (overheads or exp_ablation):
            found.append(Variant("forward kernel alone", None, 1.0, forward_kernel))
        flat = forward_lists.reshape(*forward_lists.shape[:2], -1)  # entries 0, 1: count, resident block
        entry = jnp.arange(flat.shape[-1])
        block0 = jnp.where(entry >= mosaic_plan.HEADER, flat & ((1 << mosaic_plan.KIND_BITS) - 1), flat)
        block0 = block0.reshape(forward_lists.shape)
        found += [Variant("forward kernel alone, every list on key block 0", None, 1.0,
                          lambda: forward_kernel(block0)),
                  Variant("forward kernel alone, K/V copied once per item", ("key_block_issuers", kv_loaded_once(
                      mb.TUNING["forward"].stages)), 1.0, forward_kernel)]

    def split_grads():
        return (jax.jit(dq_kernel)(), *jax.jit(split_dkdv)())

    return flops, found, split_grads


def table_row(seq_len, mask, variant, flops, seconds, err):
    """One table row: ms, and TFLOP/s of the variant's own work (``-`` for work 0)."""
    rate = f"{variant.work * flops / seconds / 1e12:.1f}" if variant.work else "-"
    return seq_len, mask, variant.name, f"{seconds * 1e3:.3f}", rate, err


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--dq-write-variants", action="store_true")
    parser.add_argument("--masks", default="causal,full",
                        help="comma-separated: causal, full (longest S only), causal-packed4, full-packed4")
    parser.add_argument("--exp-ablation", action="store_true",
                        help="also time the forward, dK/dV and dQ kernels with exp2 replaced by one FMA "
                             "(wrong results; what the exponentials cost)")
    parser.add_argument("--kv-ablation", action="store_true",
                        help="also time the forward kernel with every list on key block 0 and with K/V copied only "
                             "for each item's first blocks (wrong results; what the K/V stream costs)")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused (dq_thread) dK/dV/dQ kernel")
    parser.add_argument("--overheads", action="store_true",
                        help="also time the forward kernel alone (visit lists given) and the XLA work around "
                             "the kernels: the visit lists and the backward's (lse, delta)")
    parser.add_argument("--cta-overhead", default="",
                        help="comma-separated tile counts, e.g. 0,1,4: the forward and dQ kernels with every "
                             "visit list cut to that many tiles (wrong results; the fixed cost of a CTA)")
    parser.add_argument("--timing", choices=("sync", "async"), default="sync", help="as in bench_attention.py")
    parser.add_argument("--grid", choices=mb.GRID_MODES,
                        help="the forward kernel's grid (default: mosaic_backend.DEFAULT_GRID)")
    parser.add_argument("--budget-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=0,
                        help="compile every variant of an (S, mask) first, then time them in this many "
                             "interleaved rounds (medians), so that a drifting clock hits all alike; "
                             "0: each variant timed alone, one after another")
    args = parser.parse_args()
    if args.grid:
        mb.set_grid(args.grid)
    bench_attention.TIMING["mode"] = args.timing
    try:
        seqs = [int(s) for s in args.seqs.split(",")]
    except ValueError:
        parser.error(f"--seqs must be comma-separated token counts such as 8192,32768, got {args.seqs!r}")
    if min(seqs) < 1:
        parser.error(f"--seqs must be positive, got {args.seqs!r}")
    if args.rounds < 0:
        parser.error(f"--rounds must be 0 or more, got {args.rounds}")
    mask_names = args.masks.split(",")
    known = ("causal", "full", "causal-packed4", "full-packed4")
    if not mask_names or any(m not in known for m in mask_names):
        parser.error(f"--masks must be a comma-separated subset of {','.join(known)}, got {args.masks!r}")
    try:
        [int(n) for n in filter(None, args.cta_overhead.split(","))]
    except ValueError:
        parser.error(f"--cta-overhead must be comma-separated tile counts such as 0,1,4, got {args.cta_overhead!r}")
    print(f"# device: {jax.devices()[0].device_kind}; jax {jax.__version__}; B={BATCH} Hq={Q_HEADS} "
          f"Hkv={KV_HEADS} D={HEAD_DIM} bf16; tuning {mb.TUNING}; timing {args.timing}; "
          f"forward grid {mb.GRID['forward']}")
    rows = []
    for seq_len in seqs:
        for mask in mask_names:
            if mask == "full" and seq_len != seqs[-1]:
                continue
            flops, found, split_grads = variants(
                seq_len, mask, key=jax.random.key(seq_len + mask.startswith("causal")), no_fused=args.no_fused,
                overheads=args.overheads, cta_overhead=args.cta_overhead, dq_write_variants=args.dq_write_variants,
                exp_ablation=args.exp_ablation, kv_ablation=args.kv_ablation)
            grads = split_grads() if any(v.fused for v in found) else None
            timed = []  # (variant, its compiled call, calls per sample, error vs split) of those that built
            for variant in found:
                with patched(variant):  # traced (and compiled) with the patch; later calls reuse that trace
                    try:
                        jitted = jitted_call(variant)
                        # rounds: compiled and warmed up now, timed below (alone: time_call does both)
                        repeats = batch_size(jitted, *variant.args, budget_s=args.budget_s) if args.rounds else 0
                        err = "-"
                        if variant.fused:
                            err = f"{max(rel_err(a, b) for a, b in zip(jitted(), grads)):.1e}"
                        if not args.rounds:
                            seconds = time_call(jitted, *variant.args, budget_s=args.budget_s)
                            rows.append(table_row(seq_len, mask, variant, flops, seconds, err))
                            print(*rows[-1], flush=True)
                        else:
                            timed.append((variant, jitted, repeats, err))
                    except Exception as error:  # one failing variant must not hide the others
                        rows.append((seq_len, mask, variant.name,
                                     f"failed: {type(error).__name__}: {str(error)[:100]}", "-", "-"))
                        print(*rows[-1], flush=True)
            times = {variant.name: [] for variant, *_ in timed}
            for _ in range(args.rounds):  # every variant once per round, in turn
                for variant, jitted, repeats, _ in timed:
                    times[variant.name].append(time_batch(jitted, variant.args, repeats))
            for variant, _, _, err in timed:
                rows.append(table_row(seq_len, mask, variant, flops, statistics.median(times[variant.name]), err))
                print(*rows[-1], flush=True)
    print("| S | mask | kernel | ms | TFLOP/s (own work) | rel. err vs split |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


if __name__ == "__main__":
    main()
