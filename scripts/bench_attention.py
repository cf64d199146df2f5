"""Single-GPU attention throughput: this project's backends next to JAX cuDNN, same run.

    python scripts/bench_attention.py                    # everything, S = 8k and 32k
    python scripts/bench_attention.py --seqs 8192 --impls xla,cudnn --masks causal
    python scripts/bench_attention.py --impls triton,cudnn    # skip the slow xla fallback

Shapes: B=1, Hq=32, Hkv=8, D=128, bf16. Masks: ``causal`` and ``full`` (plain),
and ``causal-packed4`` / ``full-packed4``: 4 packed samples of S/4 tokens
each (segment ids and positions passed as arguments, as in training; cuDNN
through JAX cannot run these). ``causal-batch4`` / ``full-batch4`` hold the
same 4 samples as 4 batch items of S/4 tokens (the same tensors, reshaped):
the unpacked form of the same work, which cuDNN runs too, so that a packed
row's ratio to its own plain rate splits into what the shorter samples cost
every kernel (a batched row over its plain one, cuDNN's included) and what the
packing adds (the packed row over the batched one). ``--rounds N`` compiles every row of a length
first and times them in N interleaved rounds (medians), so that a drifting
clock hits all rows alike; each row then also prints its fwd+bwd ratio to
cuDNN round by round (median and range: a round's two samples are seconds
apart, so this is the ratio's own spread, and ``--json`` keeps the samples).
FLOPs: forward ``4 * B * S^2 * Hq * D`` for the full mask, half that causal;
packed masks count only the visible work (the sum over samples, 1/4 of the
plain mask); forward+backward is 3.5x the forward. Every row prints its
ratio to JAX cuDNN on the plain mask of the same kind and S (a batched row:
on the same batched mask; packed and batched rows also to their own plain
rate, round by round too with ``--rounds``), and to the
measured bf16 matmul ceiling (8192^3), all in the same run. On the plain
masks each row also prints its largest relative error against cuDNN over
out, dq, dk and dv (a wrong kernel cannot hide behind a good speed). ``--json`` keeps the rows,
``--plot`` draws them (``scripts/plot_attention.py``; gpu_kernels.sh brings both back).

    python scripts/bench_attention.py --impls mosaic \
        --mosaic-tuning "forward=128,2;dkdv=64,2;dq=128,2|forward=64,4;dkdv=64,4;dq=64,4"

times each ``|``-separated Mosaic tuning (streamed block rows, SMEM stages per kernel) as
its own row; ``backward=dq_thread`` (or ``split``; ``auto``, the default, by length) picks how the
backward gets dQ, ``forward_rescale=always`` (or ``lazy``) how the forward rescales its accumulator,
``grid=blocks`` (or ``persistent``) the forward's grid, ``item_order=auto`` (or ``rank``, ``batch``) the
order a persistent grid takes the batch rows' items in.
``--triton-tiles "forward=128,64,8,3|forward=64,64,4,3;dq=128,64,8,3"`` does the same for
the Triton tiles (block_m, block_n, num_warps, num_stages per kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))  # run as ``python -P``, the script's folder is not on the path
import trace_summary  # noqa: E402

from longvila_jax.kernels import flash_attention, mosaic_backend, triton_backend  # noqa: E402

BATCH, Q_HEADS, KV_HEADS, HEAD_DIM = 1, 32, 8, 128


TIMING = {"mode": "sync"}
REPEATS = 200  # most calls per batch in async timing
BATCH_S = 0.25  # seconds a batch of async calls aims at: the wait that ends it then costs under 1%
XLA_TILE = 1024  # the xla backend's tile rows and columns unless --block-q / --block-k say otherwise


def batch_size(fn, *args, budget_s=20.0):
    """Calls per timed sample of ``fn(*args)``, after one warm-up (compile) call and one timed call: 1 in
    sync timing, about ``BATCH_S`` of calls (at most ``REPEATS``) in async timing; 0 when one call takes
    over half of ``budget_s`` (time it once). The compile is not timed: counted in, a slow compile would
    make a fast call fall back to single awaited calls (each about 0.5 ms longer on an H200)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds = time.perf_counter() - t0
    if seconds > budget_s / 2:
        return 0
    if TIMING["mode"] != "async":
        return 1
    return max(1, min(REPEATS, int(BATCH_S / max(seconds, 1e-6))))


DISPATCH = {}  # id(fn) -> seconds per call the host spent dispatching, in its last batch


def time_batch(fn, args, repeats):
    """Seconds per call of ``max(repeats, 1)`` calls dispatched back to back, one wait at the end
    (one stream runs them in order: the last one done means all are). The host's own share (the
    dispatch loop, which blocks when too many calls are queued) goes to ``DISPATCH[id(fn)]``."""
    t0 = time.perf_counter()
    for _ in range(max(repeats, 1)):
        result = fn(*args)
    t1 = time.perf_counter()
    jax.block_until_ready(result)
    t2 = time.perf_counter()
    DISPATCH[id(fn)] = (t1 - t0) / max(repeats, 1)
    return (t2 - t0) / max(repeats, 1)


def time_call(fn, *args, min_runs=3, max_runs=20, budget_s=20.0):
    """Median seconds of ``fn(*args)`` after one warm-up (compile) call; slow calls run once.

    ``TIMING["mode"]``: ``sync`` waits for each call before the next (host launch gaps included);
    ``async`` dispatches ``REPEATS`` calls back to back and waits once per batch, so the device
    runs them without gaps (each sample is the batch's time over its size)."""
    return statistics.median(samples(fn, args, batch_size(fn, *args, budget_s=budget_s), budget_s, min_runs, max_runs))


def samples(fn, args, repeats, budget_s, min_runs=3, max_runs=20):
    """Seconds per call of ``fn(*args)`` from batches of ``repeats`` calls (``batch_size``; 0: one
    call, one sample): at least ``min_runs`` samples, more up to ``max_runs`` within ``budget_s``."""
    if repeats == 0:
        min_runs, repeats = 1, 1
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        times.append(time_batch(fn, args, repeats))
    return times


def matmul_ceiling_tflops(size):
    a = jnp.ones((size, size), jnp.bfloat16)
    seconds = time_call(jax.jit(lambda a, b: a @ b), a, a)
    return 2 * size ** 3 / seconds / 1e12


def packed_tokens(length, n_segments):
    """Segment ids 1..n and positions restarting per sample: int32 ``[1, length]``."""
    per = length // n_segments
    seg = np.repeat(np.arange(1, n_segments + 1), per)
    pos = np.tile(np.arange(per), n_segments)
    return jnp.asarray(seg[None], jnp.int32), jnp.asarray(pos[None], jnp.int32)


MASK_LAYOUTS = {"": 1, "packed4": 4, "batch4": 4}  # suffix -> samples per sequence


def mask_layout(mask):
    """``causal-packed4`` -> ``("causal", "packed4", 4)``: the plain mask, the layout suffix ("" plain,
    "packed4" one sequence of 4 samples told apart by segment ids, "batch4" the 4 samples as batch items)
    and the samples per sequence."""
    plain, _, layout = mask.partition("-")
    if plain not in ("causal", "full") or layout not in MASK_LAYOUTS:
        raise ValueError(f"bench mask {mask!r}: expected causal or full, optionally with -packed4 or -batch4 "
                         f"(e.g. causal-packed4)")
    return plain, layout, MASK_LAYOUTS[layout]


def check_length(mask, *lengths):
    """Raise ``ValueError`` naming ``mask`` or the length unless every length splits into its samples."""
    _, _, n_samples = mask_layout(mask)
    for length in lengths:
        if length < n_samples or length % n_samples:
            raise ValueError(f"bench mask {mask!r} splits each sequence into {n_samples} samples: the length must be a "
                             f"multiple of {n_samples}, got {length}")


def anchor_mask(mask):
    """The JAX cuDNN row a row is compared with: the same batched mask (cuDNN runs it), else the plain one."""
    plain, layout, _ = mask_layout(mask)
    return mask if layout == "batch4" else plain


def forward_flops(length, causal, n_segments):
    per = length // n_segments
    flops = 4 * BATCH * n_segments * per * per * Q_HEADS * HEAD_DIM
    return flops / 2 if causal else flops


def attention_fn(impl, causal, n_segments, block_q, block_k):
    """``f(q, k, v, *tokens) -> out`` for one backend and mask; ``tokens`` (segment ids, positions)
    only for packed masks, passed as arguments as a training step gets them from its batch (closed
    over, XLA would fold the visit lists at compile time)."""
    if impl == "jax-cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                             implementation="cudnn")
    kwargs = dict(causal=causal, impl=impl)
    if impl == "xla":
        kwargs.update(block_q=block_q, block_k=block_k)
    if n_segments > 1:
        return lambda q, k, v, seg, pos: flash_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                                         q_positions=pos, kv_positions=pos, **kwargs)[0]
    return lambda q, k, v: flash_attention(q, k, v, **kwargs)[0]


def mask_call(impl, length, mask, tensors, block_q, block_k):
    """``(f, (q, k, v, dout), tokens, forward FLOPs)`` of one backend (a name, tuning applied) and
    mask on one length's ``[1, S, H, D]`` tensors: a batched mask reshapes them to ``[4, S / 4, H, D]``
    (the packed samples as batch items), a packed one adds its segment ids and positions."""
    plain, layout, n_segments = mask_layout(mask)
    if layout == "batch4":
        tensors = tuple(x.reshape(n_segments, length // n_segments, *x.shape[2:]) for x in tensors)
    tokens = packed_tokens(length, n_segments) if layout == "packed4" else ()
    f = attention_fn(impl, plain == "causal", n_segments if tokens else 1, block_q, block_k)
    return f, tensors, tokens, forward_flops(length, plain == "causal", n_segments)


def fwd_bwd_fn(f):
    """``f(q, k, v, *tokens) -> out`` -> ``step(q, k, v, dout, *tokens) -> (dq, dk, dv)``: the forward+backward
    every attention bench times (the tokens are arguments, not differentiated)."""
    return lambda q, k, v, dout, *tokens: jax.vjp(lambda *qkv: f(*qkv, *tokens), q, k, v)[1](dout)


DEFAULT_MOSAIC_TUNING = dict(mosaic_backend.TUNING)


def set_mosaic_tuning(spec: str):
    """``forward=128,2;dkdv=64,2;dq=128,2;backward=split;forward_rescale=always;grid=blocks`` ->
    mosaic_backend.TUNING, the dQ mode, the forward's rescale and grid (kernels not named: defaults;
    backward: auto, forward_rescale: lazy, the grid mosaic_backend.DEFAULT_GRID unless named)."""
    mosaic_backend.TUNING.update(DEFAULT_MOSAIC_TUNING)
    mosaic_backend.set_backward(mosaic_backend.BACKWARD_MODES[0])
    mosaic_backend.GRID.update(mosaic_backend.DEFAULT_GRID)
    mosaic_backend.set_forward_rescale(mosaic_backend.FORWARD_RESCALE_DEFAULT)
    mosaic_backend.set_dq_thread("")
    mosaic_backend.set_mask_tiles(mosaic_backend.MASK_TILE_MODES[0])
    mosaic_backend.set_item_order("auto")
    modes = dict(mask_tiles=mosaic_backend.set_mask_tiles, dq_thread=mosaic_backend.set_dq_thread,
                 item_order=mosaic_backend.set_item_order,
                 backward=mosaic_backend.set_backward, forward_rescale=mosaic_backend.set_forward_rescale,
                 grid=mosaic_backend.set_grid)
    for item in filter(None, spec.split(";")):
        name, _, values = item.partition("=")
        if name in modes:
            try:
                modes[name](values)
            except ValueError as err:
                raise SystemExit(f"--mosaic-tuning: {err}") from None
            continue
        try:
            block, stages = map(int, values.split(","))
        except ValueError:
            raise SystemExit(f"--mosaic-tuning: {item!r} is not KERNEL=BLOCK,STAGES (e.g. dq=128,2) "
                             f"or one of {', '.join(name + '=MODE' for name in modes)}") from None
        mosaic_backend.set_tuning(name, block, stages)


DEFAULT_TRITON_TILES = dict(triton_backend.TILES)


def set_triton_tiles(spec: str):
    """``forward=128,64,8,3;dq=64,64,4,3`` -> triton_backend.TILES (kernels not named: defaults)."""
    triton_backend.TILES.update(DEFAULT_TRITON_TILES)
    for item in filter(None, spec.split(";")):
        name, _, values = item.partition("=")
        try:
            tiles = triton_backend.Tiles(*map(int, values.split(",")))
        except (TypeError, ValueError):
            raise SystemExit(f"--triton-tiles: {item!r} is not KERNEL=BLOCK_M,BLOCK_N,WARPS,STAGES") from None
        if name not in DEFAULT_TRITON_TILES:
            raise SystemExit(f"--triton-tiles: unknown kernel {name!r}; one of {sorted(DEFAULT_TRITON_TILES)}")
        triton_backend.TILES[name] = tiles


def rel_err(a, b):
    """``|a - b| / |b|`` computed on the device in float32 (``kernels.testing.rel_err`` copies both to the
    host in float64: gigabytes at 32k)."""
    a, b = (jnp.asarray(x, jnp.float32) for x in (a, b))
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def use_impl(impl: str) -> str:
    """Apply the tuning an ``impl`` row names (``mosaic[SPEC]``, ``triton[SPEC]``; plain names reset
    it to the defaults) and return the backend's name."""
    for name, setter in (("mosaic", set_mosaic_tuning), ("triton", set_triton_tiles)):
        if impl == name or impl.startswith(name + "["):
            setter(impl[len(name) + 1:-1] if impl.endswith("]") else "")
            return name
    return impl


def inputs(length):
    """q, k, v, dout of one sequence length (the same for every row of that length)."""
    keys = jax.random.split(jax.random.key(length), 4)
    q = jax.random.normal(keys[0], (BATCH, length, Q_HEADS, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(keys[1], (BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(keys[2], (BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    return q, k, v, dout


class Row:
    """One (impl, S, mask): its two jitted calls, compiled under the impl's tuning (a later tuning
    change does not retrace them), and the timings taken so far."""

    def __init__(self, impl, length, mask, tensors, block_q, block_k, budget_s):
        self.impl, self.length, self.mask = impl, length, mask
        f, (q, k, v, dout), tokens, self.flops = mask_call(use_impl(impl), length, mask, tensors, block_q, block_k)
        self.fwd = jax.jit(f)
        self.fwd_bwd = jax.jit(fwd_bwd_fn(f))
        self.fwd_args, self.fwd_bwd_args = (q, k, v, *tokens), (q, k, v, dout, *tokens)
        self.budget_s = budget_s
        self.repeats = (batch_size(self.fwd, *self.fwd_args, budget_s=budget_s),
                        batch_size(self.fwd_bwd, *self.fwd_bwd_args, budget_s=budget_s))
        self.times = ([], [])

    def outputs(self):
        """``(out, dq, dk, dv)`` for the error check."""
        return (self.fwd(*self.fwd_args), *self.fwd_bwd(*self.fwd_bwd_args))

    def sample(self):
        """One more timing of each call (a batch of calls, see ``batch_size``)."""
        for times, fn, args, repeats in zip(self.times, (self.fwd, self.fwd_bwd), (self.fwd_args, self.fwd_bwd_args),
                                            self.repeats):
            times.append(time_batch(fn, args, repeats))

    def time_alone(self):
        """``time_call``'s samples of each call, one call after the other."""
        for times, fn, args, repeats in zip(self.times, (self.fwd, self.fwd_bwd), (self.fwd_args, self.fwd_bwd_args),
                                            self.repeats):
            times.extend(samples(fn, args, repeats, self.budget_s))

    def trace(self, trace_root, max_calls=50):
        """Each call's batch (at most ``max_calls`` calls) once more under the JAX profiler: ``[(call,
        calls, wall s per call, trace_summary.Timeline of the batch, its device events)]``; the traces
        stay under ``trace_root``."""
        found = []
        for call, fn, args, repeats in zip(("fwd", "fwd+bwd"), (self.fwd, self.fwd_bwd),
                                           (self.fwd_args, self.fwd_bwd_args), self.repeats):
            calls = min(max(repeats, 1), max_calls)
            name = re.sub(r"[^\w.-]", "_", f"{self.impl}_{self.length}_{self.mask}_{call}")
            trace_dir = pathlib.Path(trace_root) / name
            jax.block_until_ready(fn(*args))
            with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
                wall = time_batch(fn, args, calls)
            events, _, _ = trace_summary.device_events(str(trace_dir))
            found.append((call, calls, wall, trace_summary.timeline(events), events))
        return found

    def result(self):
        t_fwd, t_all = (statistics.median(times) for times in self.times)
        return dict(fwd_ms=t_fwd * 1e3, fwd_bwd_ms=t_all * 1e3, fwd_tflops=self.flops / t_fwd / 1e12,
                    fwd_bwd_tflops=3.5 * self.flops / t_all / 1e12, samples=len(self.times[1]),
                    fwd_bwd_ms_samples=[t * 1e3 for t in self.times[1]],
                    fwd_dispatch_ms=DISPATCH.get(id(self.fwd), 0.0) * 1e3,
                    fwd_bwd_dispatch_ms=DISPATCH.get(id(self.fwd_bwd), 0.0) * 1e3)


def round_ratios(row, anchor):
    """``row``'s fwd+bwd TFLOP/s over ``anchor``'s, one ratio per interleaved round (each round's two samples
    were taken seconds apart, so a clock that drifts between rounds moves both); [] without an anchor."""
    if anchor is None or row is anchor:
        return []
    return [(row.flops / mine) / (anchor.flops / theirs) for mine, theirs in zip(row.times[1], anchor.times[1])]


def print_traces(built, trace_root):
    """Per row and call: wall time per call against the device's span (first op start to last op end)
    and busy time per call, so that a timing can be split into kernels, idle device and host."""
    print("| impl | S | mask | call | calls traced | wall ms per call | device span ms per call "
          "| device busy ms per call | ops per call | idle gaps over 20 us (longest) | longest ops, us per call |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in built:
        try:
            found = row.trace(trace_root)
        except Exception as e:  # a failing trace must not hide the timings printed before it
            print(f"| {row.impl} | {row.length} | {row.mask} | trace failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        for call, calls, wall, line, events in found:
            gaps = [g for g in line.gaps_us if g > 20]
            gap_text = f"{len(gaps)} ({gaps[0]:.0f} us)" if gaps else "0"
            longest = sorted(trace_summary.op_totals(events).items(), key=lambda item: -item[1][1])[:3]
            ops_text = ", ".join(f"{name[:24]} {us / calls:.0f}" for name, (_, us) in longest)
            print(f"| {row.impl} | {row.length} | {row.mask} | {call} | {calls} | {wall * 1e3:.3f} "
                  f"| {line.span_us / calls / 1e3:.3f} | {line.busy_us / calls / 1e3:.3f} | {len(events) / calls:.1f} "
                  f"| {gap_text} | {ops_text} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    implemented = ["mosaic", "triton", "cudnn", "xla"]  # slowest last
    parser.add_argument("--impls", default=",".join(implemented),
                        help="project backends to time (JAX cuDNN always runs as the anchor)")
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--masks", default="causal,full,causal-packed4,full-packed4")
    parser.add_argument("--block-q", type=int, default=XLA_TILE, help="xla backend tile rows")
    parser.add_argument("--block-k", type=int, default=XLA_TILE, help="xla backend tile columns")
    parser.add_argument("--budget-s", type=float, default=10.0, help="timing budget per measurement")
    parser.add_argument("--triton-tiles", default="",
                        help="'|'-separated Triton tile sets, each timed as its own row, e.g. "
                             "'forward=128,64,8,3;dkdv=32,128,8,3|dq=128,64,8,3'")
    parser.add_argument("--mosaic-tuning", default="",
                        help="'|'-separated Mosaic tunings, each timed as its own row (see the docstring)")
    parser.add_argument("--ceiling-size", type=int, default=8192, help="square matmul for the ceiling")
    parser.add_argument("--timing", choices=("sync", "async"), default="async",
                        help="async: batches of calls dispatched back to back, one wait per batch (as a training "
                             "loop runs); sync: wait after every call (adds the host's launch and wait, about "
                             "0.5 ms per call on an H200)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="compile every row of a length first, then time them in this many interleaved rounds "
                             "(one sample per row per round; medians); 0: each row timed alone, in turn")
    parser.add_argument("--trace-dir", help="after the timings, trace one batch of each row's calls with the JAX "
                        "profiler into this directory and print where the device's time went (busy, idle)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--plot", help="also draw the rows as a PNG here (scripts/plot_attention.py)")
    args = parser.parse_args()
    TIMING["mode"] = args.timing
    if args.rounds < 0:
        raise SystemExit(f"--rounds must be 0 or more, got {args.rounds}")

    device = jax.devices()[0]
    print(f"# device: {device.device_kind}; jax {jax.__version__}; "
          f"B={BATCH} Hq={Q_HEADS} Hkv={KV_HEADS} D={HEAD_DIM} bf16")
    print(f"# triton tiles: {triton_backend.TILES}; xla tiles: {args.block_q}x{args.block_k}")
    ceiling = matmul_ceiling_tflops(args.ceiling_size)
    print(f"# bf16 matmul {args.ceiling_size}^3: {ceiling:.0f} TFLOP/s (ceiling anchor)")
    print(f"# mosaic tuning: {mosaic_backend.TUNING}, backward {mosaic_backend.BACKWARD['mode']}, "
          f"forward rescale {mosaic_backend.FORWARD_RESCALE['mode']}, "
          f"forward grid {mosaic_backend.GRID['forward']} ({mosaic_backend.workers('forward')} workers)")
    print("| impl | S | mask | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd / cuDNN | fwd+bwd / cuDNN "
          "| fwd+bwd / own plain | fwd+bwd / ceiling | max rel err vs cuDNN | ms per call (fwd / fwd+bwd) "
          "| host dispatch ms per call |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    # JAX cuDNN is the anchor: every plain mask gets its row anyway, and packed masks it cannot take
    impl_names = [i for i in args.impls.split(",") if i and i != "jax-cudnn"]
    if args.mosaic_tuning and "mosaic" in impl_names:
        at = impl_names.index("mosaic")
        impl_names[at:at + 1] = [f"mosaic[{spec}]" for spec in args.mosaic_tuning.split("|")]
        for spec in args.mosaic_tuning.split("|"):  # a bad spec stops here, before any timing
            set_mosaic_tuning(spec)
        set_mosaic_tuning("")
    if args.triton_tiles and "triton" in impl_names:
        at = impl_names.index("triton")
        impl_names[at:at + 1] = [f"triton[{spec}]" for spec in args.triton_tiles.split("|")]
        for spec in args.triton_tiles.split("|"):
            set_triton_tiles(spec)
        set_triton_tiles("")
    for mask in args.masks.split(","):  # a bad mask or length stops here, before any compile
        check_length(mask, *(int(s) for s in args.seqs.split(",")))
    rows = []
    for length in (int(s) for s in args.seqs.split(",")):
        tensors = inputs(length)
        built, errors, anchor_outputs = [], {}, {}
        for mask in args.masks.split(","):
            cudnn_runs = anchor_mask(mask) == mask  # plain or batched: cuDNN's own row, and the error check
            for impl in (["jax-cudnn"] if cudnn_runs else []) + impl_names:
                try:
                    row = Row(impl, length, mask, tensors, args.block_q, args.block_k, args.budget_s)
                    if cudnn_runs:
                        outputs = row.outputs()
                        if impl == "jax-cudnn":
                            anchor_outputs[mask] = outputs
                        elif mask in anchor_outputs:
                            errors[(impl, mask)] = max(rel_err(a, b) for a, b in zip(outputs, anchor_outputs[mask]))
                        del outputs
                    if not args.rounds:
                        row.time_alone()
                except Exception as e:  # report and go on: one failing backend must not hide the rest
                    print(f"| {impl} | {length} | {mask} | failed: {type(e).__name__}: {str(e)[:120]} |")
                    continue
                built.append(row)
        del anchor_outputs
        for _ in range(args.rounds):  # every row once per round, in turn: a drifting clock hits all alike
            for row in built:
                row.sample()
        results = {(row.impl, row.mask): row.result() for row in built}
        built_rows = {(row.impl, row.mask): row for row in built}
        for row in built:
            r, plain = results[(row.impl, row.mask)], mask_layout(row.mask)[0]
            anchor, own = results.get(("jax-cudnn", anchor_mask(row.mask))), results.get((row.impl, plain))

            def ratio(key, base):
                return f"{r[key] / base[key]:.2f}" if base else "-"

            err = errors.get((row.impl, row.mask))
            err = "-" if err is None else f"{err:.1e}"
            rows.append(dict(impl=row.impl, seq=length, mask=row.mask, **r, ceiling_tflops=ceiling,
                             ratio_fwd=ratio("fwd_tflops", anchor), ratio_fwd_bwd=ratio("fwd_bwd_tflops", anchor),
                             ratio_own_plain=ratio("fwd_bwd_tflops", own) if row.mask != plain else "-",
                             max_rel_err_vs_cudnn=err,
                             ratio_fwd_bwd_rounds=round_ratios(row, built_rows.get(("jax-cudnn", anchor_mask(row.mask))))
                             if args.rounds else [],
                             ratio_own_plain_rounds=round_ratios(row, built_rows.get((row.impl, plain)))
                             if args.rounds else []))
            print(f"| {row.impl} | {length} | {row.mask} | {r['fwd_tflops']:.1f} | {r['fwd_bwd_tflops']:.1f} "
                  f"| {rows[-1]['ratio_fwd']} | {rows[-1]['ratio_fwd_bwd']} | {rows[-1]['ratio_own_plain']} "
                  f"| {r['fwd_bwd_tflops'] / ceiling:.2f} | {err} | {r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f} "
                  f"| {r['fwd_dispatch_ms']:.3f} / {r['fwd_bwd_dispatch_ms']:.3f} |", flush=True)
        for r in rows:  # the same ratio round by round: how far one round's pair of samples moves it
            if r["seq"] == length and r["impl"] != "jax-cudnn" and len(r["ratio_fwd_bwd_rounds"]) > 1:
                paired = r["ratio_fwd_bwd_rounds"]
                print(f"# {r['impl']} {length} {r['mask']}: fwd+bwd / cuDNN per round {statistics.median(paired):.3f} "
                      f"(median of {len(paired)}; {min(paired):.3f}-{max(paired):.3f})")
            if r["seq"] == length and len(r["ratio_own_plain_rounds"]) > 1:
                paired = r["ratio_own_plain_rounds"]
                print(f"# {r['impl']} {length} {r['mask']}: fwd+bwd / own plain per round "
                      f"{statistics.median(paired):.3f} (median of {len(paired)}; {min(paired):.3f}-{max(paired):.3f})")
        if args.trace_dir:
            print_traces(built, args.trace_dir)
        del built, tensors
    run = dict(device=device.device_kind, jax=jax.__version__, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run, f, indent=1)
    if args.plot and rows:
        import plot_attention

        print(f"# plot: {plot_attention.plot_rows(run, args.plot)}")


if __name__ == "__main__":
    main()
