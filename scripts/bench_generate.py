"""Long-video generation speed: time to first token and decode tokens/s, next to Hugging Face in the same run.

    python scripts/bench_generate.py                                   # nvidia-h200-x2: hf, 1gpu, ring2
    python scripts/bench_generate.py --parts ulysses2 --results runs/bench_generate.json
    python scripts/bench_generate.py --parts report                    # the table of what --results holds
    python scripts/bench_generate.py --preset tiny --frames 16 --new-tokens 8 --parts hf,1gpu,ring2  # CPU smoke

Model: the LongVILA-8B shape (``configs/model/longvila-8b.json``: Llama-3-8B,
SigLIP-so400m-384, ``mlp_downsample``: 196 tokens per frame), random
weights, bf16.  Prompt: ``--frames`` frames (default 1024), each a
placeholder plus a newline token, inside ~40 text tokens: 1024 x 197 + 40 =
201,768 positions.  Greedy, exactly ``--new-tokens`` tokens (no stop token).

Parts (each appends its record to ``--results``, so parts may run as
separate commands on one warm machine):

* ``hf``: the anchor, run first in a subprocess (its GPU memory is freed
  before JAX starts): ``transformers`` ``LlamaForCausalLM`` (PyTorch, SDPA,
  bf16, one GPU) ``generate`` from ``inputs_embeds`` of the same length
  (the LLM only: transformers has no LongVILA); if it does not fit, the
  next ``--hf-frames`` length is tried and the record says so.
* ``1gpu``, ``ring2``, ``ulysses2``: ``longvila_jax.infer.Generator`` on
  one GPU, or sequence-parallel over two (ring or Ulysses): frames split
  over the GPUs for SigLIP, the prompt in balanced order, the KV cache left
  sharded along the sequence, every decode step merging per-GPU partials.

Timing: each jitted step is compiled ahead of its first call (with the real
arguments) and its compile time is subtracted, so each figure comes from a
single execution.  ``ttft_s``: ``generate`` call to the first token on the
host (frames to device, SigLIP, prefill, sampling); ``vision_s``: SigLIP +
projector alone (timed again afterwards); ``llm_ttft_s = ttft_s -
vision_s`` compares with HF; ``decode_tok_s``: tokens 1..N-1 over their
wall time as the streaming callback sees them (one row).  Output: one line
per figure with its ratios, ``--results`` and ``$OUT/bench_generate.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_TOKENS = 40
NEWLINE_ID = 198
MESHES = {"1gpu": dict(), "ring2": dict(ring=2), "ulysses2": dict(ulysses=2)}


def prompt_length(frames: int, tokens_per_frame: int) -> int:
    return TEXT_TOKENS + frames * (tokens_per_frame + 1)


def load_spec(preset: str) -> dict:
    return json.loads((ROOT / "configs" / "model" / f"{preset}.json").read_text())


# --------------------------------------------------------------------------- Hugging Face anchor

class TimingStreamer:
    """A ``generate`` streamer that stamps the arrival of every new token (the prompt's put is skipped)."""

    def __init__(self, sync):
        self.sync, self.times, self.prompt_seen = sync, [], False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sync()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def hf_worker(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    spec = load_spec(args.preset)
    llm = {k: v for k, v in spec["llm"].items() if k not in ("architectures", "dtype")}
    config = LlamaConfig(**llm)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    tokens_per_frame = ((spec["vision_tower"]["image_size"] // spec["vision_tower"]["patch_size"] + 1) // 2) ** 2
    hidden = config.hidden_size
    record = dict(part="hf", impl="transformers LlamaForCausalLM, SDPA, bf16", device=_torch_device(torch),
                  versions=dict(torch=torch.__version__, transformers=__import__("transformers").__version__),
                  attempts=[])

    def run(length, new_tokens):
        embeds = torch.randn(1, length, hidden, device=device, dtype=torch.bfloat16) * 0.02
        streamer = TimingStreamer(sync)
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, length, device=device, dtype=torch.long),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=streamer, pad_token_id=0, eos_token_id=None)
        return start, streamer.times

    run(256, 4)  # warm-up: CUDA context, cuBLAS handles, SDPA kernels
    for frames in args.hf_frames:
        length = prompt_length(frames, tokens_per_frame)
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start, times = run(length, args.new_tokens)
        except torch.OutOfMemoryError as err:
            record["attempts"].append(dict(frames=frames, tokens=length, error=f"out of memory: {str(err)[:200]}"))
            gc.collect()
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
        record.update(frames=frames, tokens=length, new_tokens=args.new_tokens, ttft_s=times[0] - start,
                      llm_ttft_s=times[0] - start, decode_tok_s=(len(times) - 1) / (times[-1] - times[0]),
                      peak_gib=peak)
        break
    return record


def _torch_device(torch) -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- JAX

class CompileFirst:
    """Wraps a jitted step: the first call waits for its inputs, compiles the step ahead of time with the
    real arguments (timed) and every call runs the compiled executable, so the first call's time is one
    execution plus ``compile_s``.  Keyword arguments are the step's static ones (the executable takes
    only the positional ones)."""

    def __init__(self, jitted):
        self.jitted, self.compiled, self.compile_s = jitted, None, 0.0

    def __call__(self, *args, **static):
        if self.compiled is None:
            import jax

            jax.block_until_ready(args)  # no execution overlaps the compile: subtracting it is exact
            start = time.perf_counter()
            self.compiled = self.jitted.lower(*args, **static).compile()
            self.compile_s = time.perf_counter() - start
        return self.compiled(*args)


def build_model(args):
    import jax.numpy as jnp
    from flax import nnx

    from longvila_jax.models.config import RuntimeConfig, config_from_dict
    from longvila_jax.models.longvila import LongVILA

    config = config_from_dict(load_spec(args.preset), where=args.preset)
    runtime = RuntimeConfig(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    start = time.perf_counter()
    model = nnx.jit(lambda: LongVILA(config, runtime, rngs=nnx.Rngs(0)))()
    model.llm.layers.self_attn.attn_impl = args.impl  # the LLM's prefill; SigLIP keeps "auto" (cuDNN serves D=72)
    return model, time.perf_counter() - start


def jax_part(name: str, model, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from longvila_jax.infer import generate as generate_module
    from longvila_jax.infer.generate import Generator
    from longvila_jax.sharding import make_mesh

    axes = MESHES[name]
    count = max(1, axes.get("ring", 1) * axes.get("ulysses", 1))
    devices = jax.devices()
    if len(devices) < count:
        return dict(part=name, error=f"needs {count} devices, {len(devices)} available")
    mesh = make_mesh(**axes, devices=devices[:count])
    config = model.config
    rng = np.random.default_rng(0)
    vocab = config.llm.vocab_size
    ids = rng.integers(vocab // 4, vocab, size=TEXT_TOKENS).astype(np.int32)
    frame_ids = np.tile(np.array([config.image_token_id, min(NEWLINE_ID, vocab - 1)], np.int32), args.frames)
    row = np.concatenate([ids[:20], frame_ids, ids[20:]])
    size = config.vision.image_size
    pixels = rng.uniform(-1, 1, size=(args.frames, size, size, 3)).astype(np.float32)

    gen = Generator(model, mesh, bucket=1024, frames_per_call=args.frames_per_call)
    steps = {k: CompileFirst(getattr(gen, k)) for k in ("encode_step", "prefill_step", "decode_step")}
    for k, wrapped in steps.items():
        setattr(gen, k, wrapped)
    generate_module._first_token(jnp.zeros((1, config.llm.vocab_size), jnp.float32), jax.random.PRNGKey(0),
                                 jnp.float32(0), jnp.float32(1)).block_until_ready()
    times = []
    start = time.perf_counter()
    out = gen.generate([row], pixel_values=pixels, max_new_tokens=args.new_tokens,
                       on_tokens=lambda i, tokens, active: times.append(time.perf_counter()))
    compile_s = {k: round(w.compile_s, 2) for k, w in steps.items()}
    before_first = sum(compile_s.values())  # every compile happens before the first token is read back
    start_vision = time.perf_counter()
    gen.encode(pixels).block_until_ready()
    vision_s = time.perf_counter() - start_vision
    ttft = times[0] - start - before_first
    stats = [d.memory_stats() or {} for d in mesh.devices.flat]
    record = dict(part=name, mesh={k: int(v) for k, v in mesh.shape.items() if v > 1} or {"devices": 1},
                  device=str(devices[0].device_kind), impl=args.impl, frames=args.frames,
                  tokens=int(out.layout.lengths[0]), padded_tokens=int(out.layout.length),
                  new_tokens=len(out.tokens[0]), ttft_s=ttft, vision_s=vision_s, llm_ttft_s=ttft - vision_s,
                  decode_tok_s=(len(times) - 1) / (times[-1] - times[0]), compile_s=compile_s,
                  peak_gib=[round(s.get("peak_bytes_in_use", 0) / 2 ** 30, 1) for s in stats],
                  versions=dict(jax=jax.__version__))
    del gen, out
    gc.collect()
    return record


# --------------------------------------------------------------------------- report

def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def report(results: dict) -> list[str]:
    """One line per figure with its ratio to HF and (SP) to one GPU."""
    lines = []
    hf, one = results.get("hf", {}), results.get("1gpu", {})
    if "ttft_s" in hf:
        lines.append(f"hf (anchor)  {hf['frames']} frames, {hf['tokens']} tokens: TTFT {hf['ttft_s']:.2f} s, "
                     f"decode {hf['decode_tok_s']:.1f} tok/s")
    elif hf:
        lines.append(f"hf (anchor)  did not fit: {hf.get('attempts')}")
    for name in MESHES:
        r = results.get(name)
        if not r or "ttft_s" not in r:
            if r:
                lines.append(f"{name}: {r.get('error')}")
            continue
        line = (f"{name:<9} {r['frames']} frames, {r['tokens']} tokens: TTFT {r['ttft_s']:.2f} s (vision "
                f"{r['vision_s']:.2f} s, LLM {r['llm_ttft_s']:.2f} s), decode {r['decode_tok_s']:.1f} tok/s")
        if hf.get("tokens") == r["tokens"]:
            line += (f" | HF/ours: LLM TTFT {hf['llm_ttft_s'] / r['llm_ttft_s']:.2f}, ours/HF: decode "
                     f"{r['decode_tok_s'] / hf['decode_tok_s']:.2f}")
        if name != "1gpu" and "ttft_s" in one and one["tokens"] == r["tokens"]:
            line += (f" | speed-up over 1 GPU: TTFT {one['ttft_s'] / r['ttft_s']:.2f}, decode "
                     f"{r['decode_tok_s'] / one['decode_tok_s']:.2f}")
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="hf,1gpu,ring2", help="comma list of hf, 1gpu, ring2, ulysses2, report")
    parser.add_argument("--preset", default="longvila-8b", help="model preset in configs/model")
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--hf-frames", default=None, help="comma list of frame counts HF tries in turn "
                                                          "(default: --frames, then halves down to 128)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--impl", default=None, help="prefill attention backend (default auto: cuDNN for one "
                                                     "device's plain causal prompt, Triton under ring/Ulysses)")
    parser.add_argument("--frames-per-call", type=int, default=128, help="frames per SigLIP call")
    parser.add_argument("--results", default=str(ROOT / "runs" / "bench_generate.json"))
    parser.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hf_frames:
        args.hf_frames = [int(f) for f in args.hf_frames.split(",")]
    else:
        args.hf_frames = [args.frames]
        while args.hf_frames[-1] > 128:
            args.hf_frames.append(args.hf_frames[-1] // 2)
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if args.hf_worker:
        results = load_results(results_path)
        results["hf"] = hf_worker(args)
        results_path.write_text(json.dumps(results, indent=1))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ("hf", "report", *MESHES)]
    if unknown:
        parser.error(f"unknown parts {unknown}; use hf, {', '.join(MESHES)}, report")
    if "hf" in parts:  # first, in its own process, so its GPU memory is gone before JAX starts
        cmd = [sys.executable, __file__, "--hf-worker", "--preset", args.preset, "--new-tokens", str(args.new_tokens),
               "--hf-frames", ",".join(map(str, args.hf_frames)), "--results", str(results_path)]
        done = subprocess.run(cmd, check=False)
        if done.returncode:
            results = load_results(results_path)
            results["hf"] = dict(part="hf", error=f"the HF worker exited with {done.returncode}")
            results_path.write_text(json.dumps(results, indent=1))
    jax_parts = [p for p in parts if p in MESHES]
    if jax_parts:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
        from longvila_jax.platform import has_nvidia_gpu

        if not has_nvidia_gpu():
            os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        args.impl = args.impl or "auto"
        model, build_s = build_model(args)
        print(f"built {args.preset} (random weights, bf16) in {build_s:.1f} s on {jax.devices()[0].device_kind}")
        for name in jax_parts:
            record = jax_part(name, model, args)
            results = load_results(results_path)
            results[name] = record
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(record))
    results = load_results(results_path)
    print("\n".join(report(results)))
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_generate.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
