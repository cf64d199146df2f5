"""Tiny random Hugging Face checkpoints (PyTorch, CPU) for parity and conversion tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from safetensors.numpy import save_file

torch.set_num_threads(2)


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.15) -> torch.nn.Module:
    """Replaces every parameter with fresh noise large enough that attention and RoPE matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return model.eval()


def llama_config(**overrides) -> tf.LlamaConfig:
    kw = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
              rope_theta=10000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64})
    kw.update(overrides)
    return tf.LlamaConfig(**kw)


def qwen2_config(**overrides) -> tf.Qwen2Config:
    kw = dict(vocab_size=150, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=1, rope_theta=1000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    kw.update(overrides)
    return tf.Qwen2Config(**kw)


def siglip_config(**overrides) -> tf.SiglipVisionConfig:
    kw = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=42,
              patch_size=6, layer_norm_eps=1e-6)  # grid 7x7: odd, exercises the projector's padding
    kw.update(overrides)
    return tf.SiglipVisionConfig(**kw)


def causal_lm(config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                         dtype=torch.float32), seed)


def siglip(config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(tf.SiglipVisionModel._from_config(config, attn_implementation="eager",
                                                       dtype=torch.float32), seed)


def projector_tensors(kind: str, d_vision: int, d_llm: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """VILA ``mm_projector`` weights (torch layout) for ``kind``."""
    w = lambda *shape: (0.15 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    if kind.startswith("mlp_downsample"):
        d_in = 4 * d_vision
        return {"layers.1.weight": (1 + 0.1 * rng.standard_normal(d_in)).astype(np.float32), "layers.1.bias": w(d_in),
                "layers.2.weight": w(d_llm, d_in), "layers.2.bias": w(d_llm),
                "layers.4.weight": w(d_llm, d_llm), "layers.4.bias": w(d_llm)}
    if kind == "mlp2x_gelu":
        return {"layers.0.weight": w(d_llm, d_vision), "layers.0.bias": w(d_llm),
                "layers.2.weight": w(d_llm, d_llm), "layers.2.bias": w(d_llm)}
    return {"layers.weight": w(d_llm, d_vision), "layers.bias": w(d_llm)}


def write_vila(folder: Path, llm_cfg, vision_cfg, projector_type: str, seed: int, *, select_layer: int = -2,
               shard: str | None = None, image_token_id: int | None = None):
    """A VILA-layout checkpoint; returns (torch llm, torch vision model, projector tensors)."""
    folder = Path(folder)
    llm = causal_lm(llm_cfg, seed)
    vision = siglip(vision_cfg, seed + 1)
    kw = {"max_shard_size": shard} if shard else {}
    llm.save_pretrained(folder / "llm", **kw)
    vision.save_pretrained(folder / "vision_tower")
    tensors = projector_tensors(projector_type, vision_cfg.hidden_size, llm_cfg.hidden_size,
                                np.random.default_rng(seed + 2))
    (folder / "mm_projector").mkdir(parents=True)
    save_file(tensors, str(folder / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    (folder / "mm_projector" / "config.json").write_text(
        json.dumps({"mm_projector_type": projector_type, "model_type": "v2l_projector"}, indent=2))
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "mm_vision_select_layer": select_layer,
           "mm_hidden_size": vision_cfg.hidden_size, "hidden_size": llm_cfg.hidden_size,
           "llm_cfg": llm_cfg.to_dict(), "vision_tower_cfg": vision_cfg.to_dict(),
           "mm_projector_cfg": {"mm_projector_type": projector_type}}
    if image_token_id is not None:
        top["image_token_id"] = image_token_id
    (folder / "config.json").write_text(json.dumps(top, indent=2))
    return llm, vision, tensors
