"""The backward's row statistics (delta = rowsum(dout * out), lse in base 2) in their XLA forms, device time.

    python scripts/bench_row_stats.py --seqs 8192,32768

Shapes as in ``bench_attention.py`` (B=1, Hq=32, D=128, bf16 out and dout). Each form is jitted on
its own and run ``--steps`` times under one profiler trace; printed: device microseconds per call of
each form (all its kernels), and the time to read out and dout once at ``--bandwidth`` GB/s.
Forms: ``fused`` (the expression before kernels/row_stats.py: row sum, transpose, stack and pad with
nothing between them), ``kept apart`` (kernels/row_stats.py: the row sum behind an optimization barrier),
``row sum only``. Jitted alone, XLA compiles ``fused`` well (35.5 us at 8k on an H200, BENCHMARKS.md run
X); only inside the whole backward did it fuse the row sum into the stacking at a slow rate (217 us), which
``profile_attention.py`` shows. This script checks that a form runs near the read-once floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402
from profile_attention import device_ops  # noqa: E402  (sets XLA_FLAGS before jax runs anything)

from longvila_jax.kernels import row_stats  # noqa: E402


def stats_fused(out, dout, lse):
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    delta = jnp.where(jnp.isfinite(lse), delta, 0.0)
    return jnp.pad(jnp.stack([row_stats.lse_base2(lse), delta], axis=2), ((0, 0),) * 3 + ((0, 128),))


def stats_kept_apart(out, dout, lse):
    delta = row_stats.softmax_delta(out, dout, lse, None)
    return jnp.pad(jnp.stack([row_stats.lse_base2(lse), delta], axis=2), ((0, 0),) * 3 + ((0, 128),))


def row_sum_only(out, dout, lse):
    del lse
    return row_stats.row_sum(out, dout)


FORMS = {"fused": stats_fused, "kept apart": stats_kept_apart, "row sum only": row_sum_only}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bandwidth", type=float, default=4800.0, help="GB/s for the read-once floor")
    args = parser.parse_args()
    try:
        seqs = [int(s) for s in args.seqs.split(",")]
    except ValueError:
        raise SystemExit(f"--seqs must be comma-separated token counts, e.g. 8192,32768; got {args.seqs!r}") from None
    if min(seqs) < 1 or args.steps < 1:
        raise SystemExit(f"--seqs entries and --steps must be at least 1, got {args.seqs!r} and {args.steps}")
    print(f"# {jax.devices()[0].device_kind}; jax {jax.__version__}; Hq={ba.Q_HEADS} D={ba.HEAD_DIM} bf16")
    print("| S | form | us per call | read-once floor us |")
    print("|---|---|---|---|")
    for seq_len in seqs:
        keys = jax.random.split(jax.random.key(seq_len), 3)
        shape = (ba.BATCH, seq_len, ba.Q_HEADS, ba.HEAD_DIM)
        out, dout = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[:2])
        lse = jax.random.normal(keys[2], (ba.BATCH, ba.Q_HEADS, seq_len), jnp.float32)
        programs = {}
        for name, form in FORMS.items():
            programs[name] = jax.jit(form)
            jax.block_until_ready(programs[name](out, dout, lse))
        trace_dir = tempfile.mkdtemp(prefix="bench_row_stats_")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                for jitted in programs.values():
                    jax.block_until_ready(jitted(out, dout, lse))
        modules, _ = device_ops(trace_dir, by="hlo_module")
        floor_us = 2 * out.size * 2 / (args.bandwidth * 1e9) * 1e6
        for name, form in FORMS.items():
            us = sum(t for module, (_, t) in modules.items() if module.endswith(form.__name__))
            print(f"| {seq_len} | {name} | {us / args.steps:.1f} | {floor_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
