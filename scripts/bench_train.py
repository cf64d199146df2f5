"""Training throughput of the LongVILA-8B shape (random weights, long-SFT stage) on all local GPUs.

    python scripts/bench_train.py                              # the default plan on 2x H200 (nvidia-h200-x2)
    python scripts/bench_train.py --only main --remat save_attention --ulysses 2
    python scripts/bench_train.py --only sweep --sweep 131072,262144,524288 --remat full

What it measures, each configuration in a fresh child process (so an
out-of-memory run cannot disturb the next):

* ``main``: one long-SFT step of the LongVILA-8B shape (Llama-3-8B + SigLIP
  so400m-384, ``mlp_downsample``, bf16 compute, float32 master weights and
  AdamW state, ZeRO-3 over every GPU): one row of 256 frames (196 visual
  tokens each, 50,176 tokens) plus text to ``--seq`` tokens (default 53,248),
  frames sharded over the GPUs, the sequence over ``ring x ulysses``, for
  each remat policy in ``--remats``.  Step time (median of the measured
  steps; the first step, which compiles, is excluded), tokens/s, model
  TFLOP/s per GPU and MFU (``longvila_jax.train.flops``: 6N per token,
  attention ``4 L Hq D sum L_i^2 / 2`` forward x3, vision x1 when frozen,
  x3 here), peak GPU memory.
* ``sweep``: the same step at growing ``--sweep`` lengths (256 frames, the
  rest text) with the ``--sweep-remat`` policy; the longest that fits.
* The anchor, in the same run: a bf16 8192^3 matmul's TFLOP/s on one GPU
  (the chip's practical ceiling); every figure prints its ratio to it.

Writes ``bench_train.json`` under ``$OUT`` (default /tmp) and prints one
line per configuration.  Needs no dataset: the rows are synthetic (random
tokens and frames, packed and put in the balanced device order with the
data layer's own functions).
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


def matmul_anchor(size: int = 8192, reps: int = 20) -> dict:
    """bf16 ``size^3`` matmul TFLOP/s on the first GPU, the device kind and count (runs in a child)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return {"tflops": 2 * size ** 3 * reps / (time.perf_counter() - start) / 1e12,
            "device": jax.devices()[0].device_kind, "gpus": jax.device_count()}


class SyntheticLongVideo:
    """One row per data shard: ``frames`` frames of random pixels plus random text to ``seq`` tokens
    (labels on the text), in the balanced device order; a step source for ``train.trainer.train``."""

    text_only = False

    def __init__(self, model_config, mesh, *, seq: int, frames: int, rows: int, seed: int = 0):
        import numpy as np

        from longvila_jax.data.layout import make_batch
        from longvila_jax.data.packing import pack_row
        from longvila_jax.train.data_setup import attention_pairs, to_global

        self.seq = seq
        tpf, image = model_config.tokens_per_frame, model_config.image_token_id
        text = seq - frames * (tpf + 1)
        if text < 16:
            raise ValueError(f"--seq {seq} holds no text after {frames} frames of {tpf} + 1 tokens")
        rng = np.random.default_rng(seed)
        packed, row_frames = [], []
        size = model_config.vision.image_size
        for _ in range(rows):
            words = rng.integers(0, model_config.llm.vocab_size, text).astype(np.int32)
            ids = np.concatenate([words[:8], np.tile(np.r_[[image] * tpf, 13], frames).astype(np.int32), words[8:]])
            labels = np.zeros(ids.size, bool)
            labels[8 + frames * (tpf + 1):] = True
            packed.append(pack_row([{"input_ids": ids, "label_mask": labels}], seq, image_token_id=image,
                                   tokens_per_frame=tpf))
            row_frames.append([rng.standard_normal((frames, size, size, 3), np.float32)])
        batch = make_batch(packed, row_frames, ring_size=mesh.shape["ring"], frames_per_batch=rows * frames,
                           frame_shape=(size, size), frame_multiple=mesh.size)
        keys = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token",
                "frames")
        self.batch = to_global({k: batch[k][None] for k in keys}, mesh)
        self.info = {"tokens": int((batch["segment_ids"] > 0).sum()),
                     "attention_pairs": attention_pairs(batch["segment_ids"]), "frames": rows * frames}

    def next_step(self, step):
        return self.batch, dict(self.info)

    def seq_len_at(self, step):
        return self.seq

    def get_state(self):
        return b"{}"

    def set_state(self, state):
        pass

    def start_prefetch(self):
        pass


def child(args) -> dict:
    """One configuration: build, train ``--steps`` steps, report (runs in its own process)."""
    import jax

    from longvila_jax.train.config import load_config
    from longvila_jax.train.model_setup import build_mesh
    from longvila_jax.train.trainer import Run, train

    overrides = [f"model.remat={args.remat}", "model.init=null", f"model.param_dtype={args.param_dtype}",
                 f"model.attn_impl={args.attn_impl}",
                 "model.dtype=bfloat16", f"mesh.data=1", "mesh.fsdp=1", f"mesh.ring={args.ring}",
                 f"mesh.ulysses={args.ulysses}", f"run.steps={args.steps}", "run.log_every=1", "run.export=false",
                 "run.progress=false", f"run.out={OUT}/bench_train_run", "checkpoint.enabled=false",
                 f"optim.total_steps={args.steps}", f"run.vocab_chunk={args.vocab_chunk}"]
    config = load_config(f"configs/train/{args.preset}/long_sft.json", overrides)
    mesh = build_mesh(config.mesh)
    from longvila_jax.demo import load_preset

    source = SyntheticLongVideo(load_preset(args.preset), mesh, seq=args.seq, frames=args.frames, rows=1)
    run = Run(config, source=source)
    summary = train(config, run=run)
    records = [json.loads(line) for line in open(f"{OUT}/bench_train_run/metrics.jsonl")][-(args.steps - 1):]
    stats = jax.devices()[0].memory_stats() or {}
    return {"seq": args.seq, "frames": args.frames, "remat": args.remat, "ring": args.ring, "attn_impl": args.attn_impl,
            "ulysses": args.ulysses, "param_dtype": args.param_dtype,
            "step_s": statistics.median(r["step_time_s"] for r in records),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
            "tflops_per_gpu": statistics.median(r["tflops_per_device"] for r in records),
            "mfu": statistics.median(r["mfu"] for r in records) if records[0]["mfu"] is not None else None,
            "loss": records[-1]["loss"], "compile_s": summary["compile_s"],
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30, "device": jax.devices()[0].device_kind,
            "gpus": jax.device_count()}


def run_child(args, **changes) -> dict:
    cmd = [sys.executable, __file__, "--child"]
    merged = {**vars(args), **changes}
    for key in ("preset", "seq", "frames", "remat", "ring", "ulysses", "steps", "param_dtype", "vocab_chunk",
                "attn_impl"):
        cmd += [f"--{key.replace('_', '-')}", str(merged[key])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stdout + proc.stderr)[-1500:]
    oom = "RESOURCE_EXHAUSTED" in tail or "out of memory" in tail.lower()
    return {**{k: merged[k] for k in ("seq", "frames", "remat", "ring", "ulysses")},
            "error": "out of memory" if oom else tail}


def show(result: dict, anchor: float) -> None:
    if "error" in result:
        print(f"  seq {result['seq']:>7}  remat {result['remat']:<14} ring {result['ring']} ulysses "
              f"{result['ulysses']}: {result['error'] if result['error'] == 'out of memory' else 'FAILED'}")
        if result["error"] != "out of memory":
            print(result["error"])
        return
    mfu = f"MFU {100 * result['mfu']:.1f}%" if result["mfu"] is not None else "MFU n/a"
    print(f"  seq {result['seq']:>7}  remat {result['remat']:<14} ring {result['ring']} ulysses {result['ulysses']}:"
          f" step {result['step_s']:.2f} s, {result['tokens_per_s']:,.0f} tokens/s, "
          f"{result['tflops_per_gpu']:.3g} TFLOP/s/GPU ({result['tflops_per_gpu'] / anchor:.3g}x matmul anchor), "
          f"{mfu}, peak {result['peak_gib']:.1f} GiB, compile {result['compile_s']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-size", type=int, default=8192,
                        help="square bf16 matmul of the anchor (smaller only for a CPU smoke run)")
    parser.add_argument("--preset", default="longvila-8b")
    parser.add_argument("--seq", type=int, default=53248, help="tokens per row (frames + text)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--remat", default="save_attention")
    parser.add_argument("--remats", default="save_attention,full,save_dots,none",
                        help="policies measured at --seq (main)")
    parser.add_argument("--ring", type=int, default=1)
    parser.add_argument("--ulysses", type=int, default=None, help="default: all GPUs")
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration (the first compiles)")
    parser.add_argument("--param-dtype", default="float32")
    parser.add_argument("--vocab-chunk", type=int, default=8192)
    parser.add_argument("--attn-impl", default="auto", help="kernel backend (auto, xla, triton, cudnn)")
    parser.add_argument("--sweep", default="65536,131072,262144,393216,524288")
    parser.add_argument("--sweep-remat", default="full")
    parser.add_argument("--only", choices=["main", "sweep"], default=None)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    if args.anchor:
        print("RESULT " + json.dumps(matmul_anchor(args.anchor_size)), flush=True)
        return
    if args.anchor_size < 1:
        parser.error(f"--anchor-size must be positive, got {args.anchor_size}")
    # The parent never touches the GPUs: the anchor and every configuration run in children.
    proc = subprocess.run([sys.executable, __file__, "--anchor", "--anchor-size", str(args.anchor_size)],
                          capture_output=True, text=True)
    found = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not found:
        raise SystemExit(f"the matmul anchor failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    anchor, gpus = found[0]["tflops"], found[0]["gpus"]
    if args.ulysses is None:
        args.ulysses = max(1, gpus // args.ring)
    print(f"{gpus}x {found[0]['device']}; bf16 {args.anchor_size}^3 matmul anchor {anchor:.3g} TFLOP/s", flush=True)
    results = {"anchor_matmul_tflops": anchor, "device": found[0]["device"], "gpus": gpus, "main": [], "sweep": []}
    if args.only in (None, "main"):
        print(f"main: {args.preset}, long SFT, {args.frames} frames + text = {args.seq} tokens")
        for remat in args.remats.split(","):
            result = run_child(args, remat=remat)
            results["main"].append(result)
            show(result, anchor)
    if args.only in (None, "sweep"):
        print(f"sweep: longest sequence with remat {args.sweep_remat}")
        for seq in (int(s) for s in args.sweep.split(",")):
            result = run_child(args, seq=seq, remat=args.sweep_remat)
            results["sweep"].append(result)
            show(result, anchor)
            if "error" in result:
                break
        fits = [r["seq"] for r in results["sweep"] if "error" not in r]
        print(f"longest sequence that fits: {max(fits) if fits else 'none'} tokens")
    with open(os.path.join(OUT, "bench_train.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
