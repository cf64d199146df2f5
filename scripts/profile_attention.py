"""Where one attention forward+backward's device time goes, op by op, from a JAX profiler trace.

    python scripts/profile_attention.py --impl mosaic --seq 8192 --mask causal-packed4
    python scripts/profile_attention.py --impl "mosaic[grid=blocks]" --seq 8192 --mask causal

Shapes as in ``bench_attention.py`` (B=1, Hq=32, Hkv=8, D=128, bf16). The packed masks take their
segment ids and positions as arguments of the jitted step, as a training step (and
``bench_attention.py``) gets them; ``--tokens-as-constants`` closes over them instead, so that the visit
lists are computed while tracing. The step runs ``--steps`` times under
``jax.profiler.trace``; printed: every device op (kernels and XLA fusions, by HLO op name) with its
calls and microseconds per step, its share of the device total, then the device total and the wall
time per step. ``--trace-dir`` keeps the trace (``perfetto_trace.json.gz`` opens in ui.perfetto.dev).
CUDA graphs are off (``--xla_gpu_enable_command_buffer=``) so that each kernel shows; the
wall time per step is then a little longer than the bench's. On CPU the ops are the host thunks of XLA's CPU client (a smoke run; the figures mean nothing there).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

# XLA on GPU replays a step's kernels as CUDA graphs, which the trace shows as one op: run them one by one
# (unless --command-buffers: then the timings below are what bench_attention.py sees)
if "--command-buffers" not in sys.argv:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402
from power_attention import read_gpu  # noqa: E402
from trace_summary import device_ops  # noqa: E402


def step_fn(impl: str, seq_len: int, mask: str, tokens_as_args: bool, tensors):
    """``(jitted step(q, k, v, dout, *tokens) -> (dq, dk, dv), (q, k, v, dout), tokens)`` on one length's
    ``[1, S, H, D]`` tensors (reshaped for a batched mask)."""
    if impl == "jax-cudnn" and ba.anchor_mask(mask) != mask:
        raise SystemExit(f"--impl jax-cudnn (the bench's anchor, jax.nn.dot_product_attention) takes the plain "
                         f"and batched masks only, got --mask {mask}")
    # as the bench builds its rows
    attend, tensors, tokens, _ = ba.mask_call(impl, seq_len, mask, tensors, ba.XLA_TILE, ba.XLA_TILE)

    if tokens and not tokens_as_args:
        constants, tokens = tokens, ()
        return jax.jit(ba.fwd_bwd_fn(lambda q, k, v: attend(q, k, v, *constants))), tensors, tokens
    return jax.jit(ba.fwd_bwd_fn(attend)), tensors, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", default="mosaic",
                        help="backend, with a tuning as in bench_attention.py, or jax-cudnn (its anchor; plain masks)")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--mask", default="causal-packed4",
                        choices=[plain + (layout and "-" + layout)
                                 for plain in ("causal", "full") for layout in ba.MASK_LAYOUTS],
                        help="as in bench_attention.py (batch4: the packed samples as 4 batch items)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens-as-constants", action="store_true",
                        help="close over the packed masks' ids (their visit lists then become constants)")
    parser.add_argument("--trace-dir", help="keep the trace here (default: a temporary directory)")
    parser.add_argument("--top", type=int, default=25, help="ops printed, longest first")
    parser.add_argument("--dump-hlo", help="write the step's optimized HLO to this file (op names as printed)")
    parser.add_argument("--command-buffers", action="store_true",
                        help="keep XLA's CUDA graphs on (as in bench_attention.py); the trace then shows them whole")
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps must be at least 1, got {args.steps}")
    if args.seq < 4:
        raise SystemExit(f"--seq must be at least 4, got {args.seq}")
    try:
        ba.check_length(args.mask, args.seq)
    except ValueError as err:
        raise SystemExit(f"--seq: {err}") from None

    impl = ba.use_impl(args.impl)
    step, tensors, tokens = step_fn(impl, args.seq, args.mask, not args.tokens_as_constants, ba.inputs(args.seq))
    inputs = (*tensors, *tokens)
    if args.dump_hlo:
        pathlib.Path(args.dump_hlo).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.dump_hlo).write_text(step.lower(*inputs).compile().as_text())
    jax.block_until_ready(step(*inputs))  # compile and warm up outside the trace
    jax.block_until_ready(step(*inputs))

    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_attention_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(args.steps):
            result = step(*inputs)
        jax.block_until_ready(result)
        wall_us = (time.perf_counter() - start) / args.steps * 1e6
    ops, on_device = device_ops(trace_dir)
    total = sum(us for _, us in ops.values())
    print(f"# {jax.devices()[0].device_kind}; jax {jax.__version__}; impl {args.impl}; S={args.seq} "
          f"{args.mask}; tokens {'as constants' if args.tokens_as_constants else 'as arguments'}; "
          f"{args.steps} steps; {'device ops' if on_device else 'host thunks (no device in the trace)'}")
    print("| op | calls/step | us/step | share |")
    print("|---|---|---|---|")
    for name, (calls, us) in sorted(ops.items(), key=lambda item: -item[1][1])[:args.top]:
        print(f"| {name[:70]} | {calls / args.steps:g} | {us / args.steps:.1f} | {us / total:.1%} |")
    print(f"| all {len(ops)} ops | {sum(c for c, _ in ops.values()) / args.steps:g} | "
          f"{total / args.steps:.1f} | 100% |")
    print(f"# wall time per step (dispatch included): {wall_us:.1f} us; trace: {trace_dir}")
    for mode in ("sync", "async"):  # the same step timed as bench_attention.py times it
        ba.TIMING["mode"] = mode
        print(f"# bench_attention.time_call, {mode}: {ba.time_call(step, *inputs, budget_s=1.0) * 1e6:.1f} us; "
              f"then {gpu_clocks()}")
    for n in (10, 100, 10):  # where a longer batch's time goes: the host's dispatch, or the device
        jax.block_until_ready(step(*inputs))
        t0 = time.perf_counter()
        for _ in range(n):
            result = step(*inputs)
        t1 = time.perf_counter()
        jax.block_until_ready(result)
        t2 = time.perf_counter()
        print(f"# {n} steps back to back: {(t2 - t0) / n * 1e6:.1f} us per step, of which the host dispatched for "
              f"{(t1 - t0) / n * 1e6:.1f}; then {gpu_clocks()}")


def gpu_clocks() -> str:
    """The GPU's SM clock, power draw, temperature and throttle reasons now (nvidia-smi)."""
    reading = read_gpu()
    return str(reading) if reading else "no clocks (nvidia-smi not readable)"


if __name__ == "__main__":
    main()
