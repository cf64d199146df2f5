"""Name tables: which Hugging Face tensor feeds which JAX parameter.

A rule maps an HF key (``{i}`` stands for the layer index) to a dotted JAX
parameter path inside one component; per-layer rules fill one row of a
stacked ``[layers, ...]`` parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from longvila_jax.convert.layouts import Copy, Linear, PatchConv
from longvila_jax.models.config import LLMConfig, ProjectorConfig, VisionConfig


@dataclass(frozen=True)
class Rule:
    hf: str
    jax: str
    layout: object = Copy()

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _dense(hf_prefix: str, jax_prefix: str, bias: bool) -> list[Rule]:
    rules = [Rule(f"{hf_prefix}.weight", f"{jax_prefix}.kernel", Linear())]
    if bias:
        rules.append(Rule(f"{hf_prefix}.bias", f"{jax_prefix}.bias"))
    return rules


def llm_rules(cfg: LLMConfig) -> list[Rule]:
    """``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` keys -> ``Decoder`` parameters."""
    layer = "model.layers.{i}"
    rules = [Rule("model.embed_tokens.weight", "embed_tokens.embedding"), Rule("model.norm.weight", "norm.scale"),
             Rule(f"{layer}.input_layernorm.weight", "layers.input_layernorm.scale"),
             Rule(f"{layer}.post_attention_layernorm.weight", "layers.post_attention_layernorm.scale")]
    for name in ("q_proj", "k_proj", "v_proj"):
        rules += _dense(f"{layer}.self_attn.{name}", f"layers.self_attn.{name}", cfg.qkv_bias)
    rules += _dense(f"{layer}.self_attn.o_proj", "layers.self_attn.o_proj", cfg.o_bias)
    for name in ("gate_proj", "up_proj", "down_proj"):
        rules += _dense(f"{layer}.mlp.{name}", f"layers.mlp.{name}", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        rules += _dense("lm_head", "lm_head", False)
    return rules


VISION_PREFIX = "vision_model."


def vision_prefix(keys) -> str:
    """``vision_model.`` (VILA, transformers 4) or ``""`` (transformers 5 writes SigLIP keys without it)."""
    return VISION_PREFIX if any(k.startswith(VISION_PREFIX) for k in keys) else ""


def vision_rules(cfg: VisionConfig, prefix: str = VISION_PREFIX) -> list[Rule]:
    """``SiglipVisionModel`` keys -> ``SiglipVisionTower`` parameters (the head and post-norm are not used)."""
    emb, layer = f"{prefix}embeddings", f"{prefix}encoder.layers.{{i}}"
    rules = [Rule(f"{emb}.patch_embedding.weight", "embeddings.patch.kernel", PatchConv(cfg.patch_size, cfg.num_channels)),
             Rule(f"{emb}.patch_embedding.bias", "embeddings.patch.bias"),
             Rule(f"{emb}.position_embedding.weight", "embeddings.position_embedding")]
    for norm in ("layer_norm1", "layer_norm2"):
        rules += [Rule(f"{layer}.{norm}.weight", f"layers.{norm}.scale"), Rule(f"{layer}.{norm}.bias", f"layers.{norm}.bias")]
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rules += _dense(f"{layer}.self_attn.{name}", f"layers.self_attn.{name}", True)
    for name in ("fc1", "fc2"):
        rules += _dense(f"{layer}.mlp.{name}", f"layers.mlp.{name}", True)
    return rules


def projector_rules(cfg: ProjectorConfig) -> list[Rule]:
    """VILA ``mm_projector/model.safetensors`` keys -> ``Projector`` parameters."""
    if cfg.downsample:  # layers: 0 downsample, 1 LayerNorm, 2 Linear, 3 GELU, 4 Linear
        return [Rule("layers.1.weight", "norm.scale"), Rule("layers.1.bias", "norm.bias"),
                *_dense("layers.2", "fc1", True), *_dense("layers.4", "fc2", True)]
    if cfg.projector_type == "mlp2x_gelu":  # layers: 0 Linear, 1 GELU, 2 Linear
        return [*_dense("layers.0", "fc1", True), *_dense("layers.2", "fc2", True)]
    return _dense("layers", "fc1", True)  # linear
