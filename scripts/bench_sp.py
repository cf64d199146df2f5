"""Sequence-parallel attention throughput on all local GPUs, next to its anchors in the same run.

    python scripts/bench_sp.py                         # everything (2x H200: nvidia-h200-x2)
    python scripts/bench_sp.py --seqs 65536 --heads 32/8 --schemes ring --skip-torch

Per GPU causal forward+backward TFLOP/s (ANCHORS.md convention: forward
``4*B*S^2*Hq*D / 2``, forward+backward 3.5x) of ``sp.attention`` at
S = 64k and 128k, D = 128, bf16, B = 1, for GQA 32/8 and MHA 32/32, with the
ring (ring = N GPUs) and with Ulysses (ulysses = N), one causal sample in the
zigzag ``balanced_order``.  In the same run:

* PyTorch ``context_parallel`` (ring over SDPA, cuDNN and flash backends) on
  the same shapes, run first under ``torch.distributed.run`` (before JAX
  takes the GPUs' memory), as in ``shared/bench/anchor_torch_cp.py``; GQA
  through ``enable_gqa`` where PyTorch's CP accepts it;
* the project's single-GPU kernel at S/N with the same masks that
  ``sp.attention`` passes (segment ids and positions), and JAX cuDNN at S/N;
* for the ring: forward-only time, and the compiled HLO checked with
  ``sp.overlap.permute_overlap`` (each collective-permute-start/done pair
  spans independent attention compute or not).

Prints one line per figure with its ratios to the anchors, and writes
``bench_sp.json`` (and the ring's optimized HLO) under ``$OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OUT = os.environ.get("OUT", "/tmp")
HEAD_DIM = 128


def fwd_bwd_flops(length, q_heads, causal=True):
    flops = 4.0 * length * length * q_heads * HEAD_DIM * (0.5 if causal else 1.0)
    return 3.5 * flops


# --------------------------------------------------------------------------- PyTorch anchor

def torch_anchor(args):
    """Runs under torch.distributed.run: PyTorch context_parallel on the same shapes."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    mesh = init_device_mesh("cuda", (world,), mesh_dim_names=("cp",))
    set_rotate_method("allgather")
    results = []
    for length in args.seqs:
        for q_heads, kv_heads in args.heads:
            for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                row = dict(impl=f"torch-cp-{name}", S=length, q_heads=q_heads, kv_heads=kv_heads, world=world)
                try:
                    g = torch.Generator(device="cuda").manual_seed(0)
                    shape_q, shape_kv = (1, q_heads, length, HEAD_DIM), (1, kv_heads, length, HEAD_DIM)
                    q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=g)
                    k = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=g)
                    v = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=g)
                    do = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=g)
                    extra = {"enable_gqa": True} if kv_heads != q_heads else {}
                    with context_parallel(mesh, buffers=[q, k, v, do], buffer_seq_dims=[2, 2, 2, 2],
                                          no_restore_buffers={q, k, v, do}):
                        ql, kl, vl = (t.detach().requires_grad_() for t in (q, k, v))
                        with sdpa_kernel(backend):
                            def step():
                                F.scaled_dot_product_attention(ql, kl, vl, is_causal=True, **extra).backward(do)
                            for _ in range(args.warmup):
                                step()
                            torch.cuda.synchronize()
                            dist.barrier()
                            t0 = time.perf_counter()
                            for _ in range(args.iters):
                                step()
                            torch.cuda.synchronize()
                            sec = (time.perf_counter() - t0) / args.iters
                    row.update(ms=sec * 1e3, tflops_per_gpu=fwd_bwd_flops(length, q_heads) / world / sec / 1e12)
                except Exception as e:  # noqa: BLE001 - report and go on
                    row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                results.append(row)
                torch.cuda.empty_cache()
    if rank == 0:
        with open(os.path.join(OUT, "torch_anchor.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    dist.destroy_process_group()


def run_torch_anchor(args, n_gpus):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", __file__, "--torch-worker",
           "--seqs", *map(str, args.seqs), "--heads", *[f"{q}/{kv}" for q, kv in args.heads],
           "--iters", str(args.iters), "--warmup", str(args.warmup)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.torch_timeout)
        with open(os.path.join(OUT, "torch_anchor.json")) as fh:
            return json.load(fh)
    except Exception as e:  # noqa: BLE001
        tail = getattr(locals().get("proc"), "stderr", "") or ""
        return [dict(impl="torch-cp", error=f"{type(e).__name__}: {e}; {tail[-400:]}")]


# --------------------------------------------------------------------------- JAX side

def time_call(fn, *args, iters, warmup):
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jax_benchmarks(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from longvila_jax import kernels, sp
    from longvila_jax.sharding import make_mesh
    from longvila_jax.sp.overlap import permute_overlap

    n = jax.device_count()
    results = []
    schemes = {"ring": dict(ring=n), "ulysses": dict(ulysses=n)}
    if n >= 4:
        schemes["2d"] = dict(ring=n // 2, ulysses=2)
    for length in args.seqs:
        for q_heads, kv_heads in args.heads:
            key = jax.random.key(0)
            kq, kk, kv, kd = jax.random.split(key, 4)
            for scheme in args.schemes:
                axes = schemes[scheme]
                row = dict(impl=f"sp-{scheme}", kernel=args.impl, S=length, q_heads=q_heads, kv_heads=kv_heads,
                           world=n, **axes)
                try:
                    mesh = make_mesh(**axes)
                    ring = axes.get("ring", 1)
                    order = sp.balanced_order(np.ones(length, np.int32), ring)[0]
                    seq = ("ring", "ulysses")
                    heads_sharding = NamedSharding(mesh, P(None, seq, None, None))
                    tok_sharding = NamedSharding(mesh, P(None, seq))
                    q = jax.device_put(jax.random.normal(kq, (1, length, q_heads, HEAD_DIM), jnp.bfloat16),
                                       heads_sharding)
                    k = jax.device_put(jax.random.normal(kk, (1, length, kv_heads, HEAD_DIM), jnp.bfloat16),
                                       heads_sharding)
                    v = jax.device_put(jax.random.normal(kv, (1, length, kv_heads, HEAD_DIM), jnp.bfloat16),
                                       heads_sharding)
                    dout = jax.device_put(jax.random.normal(kd, q.shape, jnp.bfloat16), heads_sharding)
                    seg = jax.device_put(jnp.ones((1, length), jnp.int32), tok_sharding)
                    pos = jax.device_put(jnp.asarray(order[None], jnp.int32), tok_sharding)

                    def attn(q, k, v, seg, pos):
                        return sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh, impl=args.impl)

                    @jax.jit
                    def fwd_bwd(q, k, v, dout, seg, pos):
                        out, vjp = jax.vjp(lambda q, k, v: attn(q, k, v, seg, pos), q, k, v)
                        return vjp(dout)

                    fwd = jax.jit(attn)
                    sec = time_call(fwd_bwd, q, k, v, dout, seg, pos, iters=args.iters, warmup=args.warmup)
                    sec_fwd = time_call(fwd, q, k, v, seg, pos, iters=args.iters, warmup=args.warmup)
                    row.update(ms=sec * 1e3, fwd_ms=sec_fwd * 1e3,
                               tflops_per_gpu=fwd_bwd_flops(length, q_heads) / n / sec / 1e12,
                               fwd_tflops_per_gpu=fwd_bwd_flops(length, q_heads) / 3.5 / n / sec_fwd / 1e12)
                    if scheme in ("ring", "2d"):
                        hlo = fwd_bwd.lower(q, k, v, dout, seg, pos).compile().as_text()
                        name = f"sp_{scheme}_S{length}_{q_heads}-{kv_heads}.hlo.txt"
                        if length == args.seqs[0]:
                            with open(os.path.join(OUT, name), "w") as fh:
                                fh.write(hlo)
                        report = permute_overlap(hlo)
                        row.update(permutes=len(report), async_permutes=sum(r.asynchronous for r in report),
                                   overlapped_permutes=sum(r.overlapped for r in report),
                                   not_overlapped=[f"{r.computation}:{r.permute}" for r in report
                                                   if not r.overlapped][:8])
                except Exception as e:  # noqa: BLE001
                    row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                results.append(row)
                print(json.dumps(row), flush=True)

            # single GPU at S/N: the project's kernel with sp's masks, and JAX cuDNN
            local = length // n
            dev = jax.devices()[0]
            q1 = jax.device_put(jax.random.normal(kq, (1, local, q_heads, HEAD_DIM), jnp.bfloat16), dev)
            k1 = jax.device_put(jax.random.normal(kk, (1, local, kv_heads, HEAD_DIM), jnp.bfloat16), dev)
            v1 = jax.device_put(jax.random.normal(kv, (1, local, kv_heads, HEAD_DIM), jnp.bfloat16), dev)
            d1 = jax.device_put(jax.random.normal(kd, q1.shape, jnp.bfloat16), dev)
            ids = jax.device_put(jnp.ones((1, local), jnp.int32), dev)
            pos1 = jax.device_put(jnp.arange(local, dtype=jnp.int32)[None], dev)
            single = {
                "kernel-1gpu": lambda q, k, v: kernels.flash_attention(
                    q, k, v, q_segment_ids=ids, kv_segment_ids=ids, q_positions=pos1, kv_positions=pos1,
                    causal=True, impl=args.impl)[0],
                "jax-cudnn-1gpu": lambda q, k, v: jax.nn.dot_product_attention(
                    q, k, v, is_causal=True, implementation="cudnn"),
            }
            for name, f in single.items():
                row = dict(impl=name, S=local, q_heads=q_heads, kv_heads=kv_heads, world=1)
                try:
                    @jax.jit
                    def fb(q, k, v, d, f=f):
                        return jax.vjp(f, q, k, v)[1](d)

                    sec = time_call(fb, q1, k1, v1, d1, iters=args.iters, warmup=args.warmup)
                    row.update(ms=sec * 1e3, tflops_per_gpu=fwd_bwd_flops(local, q_heads) / sec / 1e12)
                except Exception as e:  # noqa: BLE001
                    row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def summarize(results):
    """One line per sp figure with its ratios to the anchors of the same shape."""
    def find(impl, length, q_heads, kv_heads):
        for r in results:
            if r.get("impl") == impl and r.get("S") == length and r.get("q_heads") == q_heads \
                    and r.get("kv_heads") == kv_heads and "tflops_per_gpu" in r:
                return r["tflops_per_gpu"]
        return None

    print("\nscheme            S     heads   TFLOP/s/GPU  vs torch-cp-cudnn  vs kernel@S/N  vs cudnn@S/N  overlap")
    for r in results:
        if not r.get("impl", "").startswith("sp-") or "tflops_per_gpu" not in r:
            if r.get("impl", "").startswith("sp-"):
                print(f"{r['impl']:<12} {r['S']:>8} {r['q_heads']}/{r['kv_heads']}  ERROR {r.get('error')}")
            continue
        world = r["world"]
        torch_cp = find("torch-cp-cudnn", r["S"], r["q_heads"], r["kv_heads"])
        kernel = find("kernel-1gpu", r["S"] // world, r["q_heads"], r["kv_heads"])
        cudnn = find("jax-cudnn-1gpu", r["S"] // world, r["q_heads"], r["kv_heads"])

        def ratio(x):
            return f"{r['tflops_per_gpu'] / x:>6.3f}x" if x else "   n/a "

        overlap = (f"{r['overlapped_permutes']}/{r['permutes']} async={r['async_permutes']}"
                   if "permutes" in r else "")
        print(f"{r['impl']:<12} {r['S']:>8} {r['q_heads']:>3}/{r['kv_heads']:<3} {r['tflops_per_gpu']:>10.1f}"
              f"   {ratio(torch_cp):>14}   {ratio(kernel):>12}  {ratio(cudnn):>11}  {overlap}")


def parse_heads(text):
    q, kv = text.split("/")
    return int(q), int(kv)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=[65536, 131072])
    ap.add_argument("--heads", type=parse_heads, nargs="+", default=[(32, 8), (32, 32)])
    ap.add_argument("--schemes", nargs="+", default=["ring", "ulysses"], choices=["ring", "ulysses", "2d"])
    ap.add_argument("--impl", default="auto", help="kernel backend for sp.attention and the 1-GPU kernel")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--torch-timeout", type=int, default=240)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_anchor(args)

    results = []
    if not args.skip_torch:  # first: before JAX takes the GPUs' memory
        n_gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU ")
        results = run_torch_anchor(args, n_gpus)
    for r in results:
        print(json.dumps(r), flush=True)
    import jax

    results += jax_benchmarks(args)
    meta = dict(jax=jax.__version__, devices=[str(d.device_kind) for d in jax.devices()],
                command=" ".join(sys.argv))
    with open(os.path.join(OUT, "bench_sp.json"), "w") as fh:
        json.dump(dict(meta=meta, results=results), fh, indent=1)
    summarize(results)


if __name__ == "__main__":
    main()
