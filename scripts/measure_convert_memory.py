"""Peak host memory of ``longvila-jax convert hf-to-orbax`` on a synthetic Llama-shaped checkpoint.

Writes a sharded bfloat16 checkpoint of the given shape (random tensors), converts it in a child
process, and reports (peak RSS - RSS of a child that only imports and starts JAX) / checkpoint bytes.

    python scripts/measure_convert_memory.py --workdir /tmp/memcheck            # ~1.1B parameters
    python scripts/measure_convert_memory.py --hidden 4096 --intermediate 14336 --layers 32 --vocab 128256  # 8B
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from longvila_jax.convert.safetensors_io import write_file, write_index

SHARD_BYTES = 1 << 30


def llama_tensors(args):
    d, f, hd = args.hidden, args.intermediate, args.hidden // args.heads
    kv = args.kv_heads * hd
    yield "model.embed_tokens.weight", (args.vocab, d)
    for i in range(args.layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (d,)
        yield f"{p}.self_attn.q_proj.weight", (d, d)
        yield f"{p}.self_attn.k_proj.weight", (kv, d)
        yield f"{p}.self_attn.v_proj.weight", (kv, d)
        yield f"{p}.self_attn.o_proj.weight", (d, d)
        yield f"{p}.post_attention_layernorm.weight", (d,)
        yield f"{p}.mlp.gate_proj.weight", (f, d)
        yield f"{p}.mlp.up_proj.weight", (f, d)
        yield f"{p}.mlp.down_proj.weight", (d, f)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (args.vocab, d)


def write_checkpoint(folder: Path, args) -> int:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shard, shard_bytes, weight_map, total, index = {}, 0, {}, 0, 1

    def flush():
        nonlocal shard, shard_bytes, index
        name = f"model-{index:05d}.safetensors"
        write_file(folder / name, shard, {"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, shard_bytes, index = {}, 0, index + 1

    for key, shape in llama_tensors(args):
        shard[key] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(ml_dtypes.bfloat16)
        shard_bytes += shard[key].nbytes
        total += shard[key].nbytes
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    write_index(folder, weight_map, {"total_size": total})
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": args.vocab,
              "hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
              "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "tie_word_embeddings": False, "dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return total


def child_peak_rss(code: str) -> int:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(after, before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/longvila_memcheck")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    total = write_checkpoint(work / "hf", args)
    baseline = child_peak_rss("import jax, jax.numpy as jnp, longvila_jax.convert.cli_ops; jnp.zeros(4).block_until_ready()")
    peak = child_peak_rss(f"from longvila_jax.cli import main; main(['convert', 'hf-to-orbax', '{work / 'hf'}', '{work / 'orbax'}'])")
    # the ru_maxrss of children is a maximum over all children so far: the conversion child is the larger one
    ratio = (peak - baseline) / total
    print(f"checkpoint {total / 2**30:.2f} GiB bf16 ({total // 2:,} parameters); baseline RSS {baseline / 2**30:.2f} GiB; "
          f"peak RSS {peak / 2**30:.2f} GiB; (peak - baseline) / checkpoint = {ratio:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
