"""Single-GPU attention throughput: this project's backends next to JAX cuDNN, same run.

    python scripts/bench_attention.py                    # everything, S = 8k and 32k
    python scripts/bench_attention.py --seqs 8192 --impls xla,cudnn --masks causal
    python scripts/bench_attention.py --impls triton,cudnn    # skip the slow xla fallback

Shapes: B=1, Hq=32, Hkv=8, D=128, bf16. Masks: ``causal`` and ``full`` (plain),
and ``causal-packed4`` / ``full-packed4``: 4 packed samples of S/4 tokens
each (segment ids; cuDNN through JAX cannot run these).
FLOPs: forward ``4 * B * S^2 * Hq * D`` for the full mask, half that causal;
packed masks count only the visible work (the sum over samples, 1/4 of the
plain mask); forward+backward is 3.5x the forward. Every row prints its
ratio to JAX cuDNN on the plain mask of the same kind and S, and to the
measured bf16 matmul ceiling (8192^3), all in the same run. On the plain
masks each row also prints its largest relative error against cuDNN over
out, dq, dk and dv (a wrong kernel cannot hide behind a good speed).

    python scripts/bench_attention.py --impls mosaic \
        --mosaic-tuning "forward=128,2;dkdv=64,2;dq=128,2|forward=64,4;dkdv=64,4;dq=64,4"

times each ``|``-separated Mosaic tuning (streamed block rows, SMEM stages per kernel) as
its own row; ``backward=fused`` (or ``split``, the default) picks how the backward gets dQ,
``forward_loop=serial`` (or ``pipelined``) the forward's loop, ``grid=blocks`` (or ``persistent``) the
forward and dQ kernels' grid (``forward_grid=``, ``dq_grid=``: one of them), ``dq_store=registers`` (or
``smem``) how dQ leaves its kernel.
``--triton-tiles "forward=128,64,8,3|forward=64,64,4,3;dq=128,64,8,3"`` does the same for
the Triton tiles (block_m, block_n, num_warps, num_stages per kernel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from longvila_jax.kernels import flash_attention, mosaic_backend, triton_backend

BATCH, Q_HEADS, KV_HEADS, HEAD_DIM = 1, 32, 8, 128


TIMING = {"mode": "sync"}
REPEATS = 200  # most calls per batch in async timing
BATCH_S = 0.25  # seconds a batch of async calls aims at: the wait that ends it then costs under 1%


def time_call(fn, *args, min_runs=3, max_runs=20, budget_s=20.0):
    """Median seconds of ``fn(*args)`` after one warm-up (compile) call; slow calls run once.

    ``TIMING["mode"]``: ``sync`` waits for each call before the next (host launch gaps included);
    ``async`` dispatches ``REPEATS`` calls back to back and waits once per batch, so the device
    runs them without gaps (each sample is the batch's time over its size)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if time.perf_counter() - t0 > budget_s / 2:
        min_runs = 1
    repeats = 1
    if TIMING["mode"] == "async" and min_runs > 1:  # batches of about BATCH_S, from one timed call
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        repeats = max(1, min(REPEATS, int(BATCH_S / max(time.perf_counter() - t0, 1e-6))))
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(repeats):  # one stream runs them in order: the last one done means all are
            result = fn(*args)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - t0) / repeats)
        del result
    return statistics.median(times)


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


def forward_flops(length, causal, n_segments):
    per = length // n_segments
    flops = 4 * BATCH * n_segments * per * per * Q_HEADS * HEAD_DIM
    return flops / 2 if causal else flops


def attention_fn(impl, length, causal, n_segments, block_q, block_k):
    """``f(q, k, v) -> out`` for one backend and mask."""
    if impl == "jax-cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                             implementation="cudnn")
    kwargs = dict(causal=causal, impl=impl)
    if impl == "xla":
        kwargs.update(block_q=block_q, block_k=block_k)
    if n_segments > 1:
        seg, pos = packed_tokens(length, n_segments)
        kwargs.update(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos)
    return lambda q, k, v: flash_attention(q, k, v, **kwargs)[0]


DEFAULT_MOSAIC_TUNING = dict(mosaic_backend.TUNING)


def set_mosaic_tuning(spec: str):
    """``forward=128,2;dkdv=64,2;dq=128,2;backward=fused;forward_loop=serial;grid=blocks`` ->
    mosaic_backend.TUNING, the dQ mode, the forward loop and the grids (kernels not named: defaults;
    backward: split, forward_loop: pipelined, the grids mosaic_backend.DEFAULT_GRID unless named;
    ``grid`` sets both the forward's and dQ's, ``forward_grid`` and ``dq_grid`` one)."""
    mosaic_backend.TUNING.update(DEFAULT_MOSAIC_TUNING)
    mosaic_backend.set_backward(mosaic_backend.BACKWARD_MODES[0])
    mosaic_backend.set_forward(mosaic_backend.FORWARD_MODES[0])
    mosaic_backend.GRID.update(mosaic_backend.DEFAULT_GRID)
    mosaic_backend.set_dq_store("smem")
    modes = dict(backward=mosaic_backend.set_backward, forward_loop=mosaic_backend.set_forward,
                 dq_store=mosaic_backend.set_dq_store,
                 grid=mosaic_backend.set_grid,
                 forward_grid=lambda mode: mosaic_backend.set_grid(mode, "forward"),
                 dq_grid=lambda mode: mosaic_backend.set_grid(mode, "dq"))
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


def bench_one(impl, length, mask, block_q, block_k, budget_s):
    """Timings, and the outputs ``(out, dq, dk, dv)`` for the error check."""
    causal = mask.startswith("causal")
    n_segments = 4 if mask.endswith("packed4") else 1
    keys = jax.random.split(jax.random.key(length), 4)
    q = jax.random.normal(keys[0], (BATCH, length, Q_HEADS, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(keys[1], (BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(keys[2], (BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    impl = use_impl(impl)
    f = attention_fn(impl, length, causal, n_segments, block_q, block_k)
    fwd = jax.jit(f)
    fwd_bwd = jax.jit(lambda q, k, v, dout: jax.vjp(f, q, k, v)[1](dout))
    flops = forward_flops(length, causal, n_segments)
    t_fwd = time_call(fwd, q, k, v, budget_s=budget_s)
    t_all = time_call(fwd_bwd, q, k, v, dout, budget_s=budget_s)
    outputs = (fwd(q, k, v), *fwd_bwd(q, k, v, dout))
    return dict(fwd_ms=t_fwd * 1e3, fwd_bwd_ms=t_all * 1e3, fwd_tflops=flops / t_fwd / 1e12,
                fwd_bwd_tflops=3.5 * flops / t_all / 1e12), outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    implemented = ["mosaic", "triton", "cudnn", "xla"]  # slowest last
    parser.add_argument("--impls", default=",".join(implemented),
                        help="project backends to time (JAX cuDNN always runs as the anchor)")
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--masks", default="causal,full,causal-packed4,full-packed4")
    parser.add_argument("--block-q", type=int, default=1024, help="xla backend tile rows")
    parser.add_argument("--block-k", type=int, default=1024, help="xla backend tile columns")
    parser.add_argument("--budget-s", type=float, default=10.0, help="timing budget per measurement")
    parser.add_argument("--triton-tiles", default="",
                        help="'|'-separated Triton tile sets, each timed as its own row, e.g. "
                             "'forward=128,64,8,3;dkdv=32,128,8,3|dq=128,64,8,3'")
    parser.add_argument("--mosaic-tuning", default="",
                        help="'|'-separated Mosaic tunings, each timed as its own row (see the docstring)")
    parser.add_argument("--ceiling-size", type=int, default=8192, help="square matmul for the ceiling")
    parser.add_argument("--timing", choices=("sync", "async"), default="sync",
                        help="sync: wait after every call; async: batches of calls dispatched back to back")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    TIMING["mode"] = args.timing

    device = jax.devices()[0]
    print(f"# device: {device.device_kind}; jax {jax.__version__}; "
          f"B={BATCH} Hq={Q_HEADS} Hkv={KV_HEADS} D={HEAD_DIM} bf16")
    print(f"# triton tiles: {triton_backend.TILES}; xla tiles: {args.block_q}x{args.block_k}")
    ceiling = matmul_ceiling_tflops(args.ceiling_size)
    print(f"# bf16 matmul {args.ceiling_size}^3: {ceiling:.0f} TFLOP/s (ceiling anchor)")
    print(f"# mosaic tuning: {mosaic_backend.TUNING}, backward {mosaic_backend.BACKWARD['mode']}, "
          f"grids {mosaic_backend.GRID} ({mosaic_backend.workers('forward')} forward workers)")
    print("| impl | S | mask | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd / cuDNN | fwd+bwd / cuDNN "
          "| fwd+bwd / own plain | fwd+bwd / ceiling | max rel err vs cuDNN |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    impl_names = [i for i in args.impls.split(",") if i]
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
    rows = []
    for length in (int(s) for s in args.seqs.split(",")):
        anchors, own_plain, anchor_outputs = {}, {}, {}
        for mask in args.masks.split(","):
            plain = mask.split("-")[0]
            impls = ["jax-cudnn"] if mask == plain else []
            impls += impl_names
            for impl in impls:
                try:
                    r, outputs = bench_one(impl, length, mask, args.block_q, args.block_k, args.budget_s)
                except Exception as e:  # report and go on: one failing backend must not hide the rest
                    print(f"| {impl} | {length} | {mask} | failed: {type(e).__name__}: {str(e)[:120]} |")
                    continue
                if impl == "jax-cudnn":
                    anchors[plain], anchor_outputs[plain] = r, outputs
                err = "-"
                if mask == plain and plain in anchor_outputs:
                    err = f"{max(rel_err(a, b) for a, b in zip(outputs, anchor_outputs[plain])):.1e}"
                del outputs
                if mask == plain:
                    own_plain[(impl, plain)] = r

                def ratio(key, base):
                    return f"{r[key] / base[key]:.2f}" if base else "-"

                anchor, own = anchors.get(plain), own_plain.get((impl, plain))
                row = dict(impl=impl, seq=length, mask=mask, **r, ceiling_tflops=ceiling,
                           ratio_fwd=ratio("fwd_tflops", anchor),
                           ratio_fwd_bwd=ratio("fwd_bwd_tflops", anchor),
                           ratio_own_plain=ratio("fwd_bwd_tflops", own), max_rel_err_vs_cudnn=err)
                rows.append(row)
                print(f"| {impl} | {length} | {mask} | {r['fwd_tflops']:.1f} | {r['fwd_bwd_tflops']:.1f} "
                      f"| {row['ratio_fwd']} | {row['ratio_fwd_bwd']} | {row['ratio_own_plain']} "
                      f"| {r['fwd_bwd_tflops'] / ceiling:.2f} | {err} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device.device_kind, jax=jax.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
