"""Model configurations read from Hugging Face ``config.json`` dictionaries.

Each config keeps the original dictionary (``hf``) so that writing a
checkpoint back reproduces it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

LEGACY_IMAGE_TOKEN_ID = -200
LLM_FAMILIES = ("llama", "qwen2")
PROJECTOR_TYPES = ("mlp_downsample", "mlp_downsample_2x2_fix", "linear", "mlp2x_gelu")


class ConfigError(ValueError):
    """A checkpoint's configuration cannot be used; the message names the file and the key."""


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise ConfigError(f"{where}: key {key!r} is missing; it is required to build the model")
    return cfg[key]


def rope_parameters(cfg: dict) -> dict:
    """RoPE settings from either transformers>=5 ``rope_parameters`` or the older ``rope_theta``/``rope_scaling``."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    params.update({k: v for k, v in scaling.items() if k not in params})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    return params


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A Llama-family or Qwen2 decoder."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: tuple  # sorted (key, value) pairs of the RoPE settings; hashable
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool = False
    mlp_bias: bool = False
    hf: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_hf(cls, cfg: dict, where: str = "config.json") -> "LLMConfig":
        family = cfg.get("model_type")
        if family not in LLM_FAMILIES:
            raise ConfigError(
                f"{where}: model_type {family!r} is not supported; longvila-jax reads {', '.join(LLM_FAMILIES)}"
            )
        heads = _need(cfg, "num_attention_heads", where)
        hidden = _need(cfg, "hidden_size", where)
        rope = rope_parameters(cfg)
        if rope["rope_type"] not in ("default", "llama3", "linear"):
            raise ConfigError(
                f"{where}: rope_type {rope['rope_type']!r} is not supported; use default, linear or llama3"
            )
        is_qwen = family == "qwen2"
        return cls(
            family=family,
            vocab_size=_need(cfg, "vocab_size", where),
            hidden_size=hidden,
            intermediate_size=_need(cfg, "intermediate_size", where),
            num_layers=_need(cfg, "num_hidden_layers", where),
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope=tuple(sorted(rope.items())),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if is_qwen else bool(cfg.get("attention_bias", False)),
            o_bias=False if is_qwen else bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            hf=dict(cfg),
        )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A SigLIP vision tower; features are the hidden state of ``select_layer``."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int
    layer_norm_eps: float
    select_layer: int = -2
    hf: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_layers_used(self) -> int:
        """Layers run to reach ``hidden_states[select_layer]`` (index 0 is the embeddings)."""
        n = self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer
        if not 0 <= n <= self.num_layers:
            raise ConfigError(
                f"mm_vision_select_layer={self.select_layer} is outside a tower of {self.num_layers} layers"
            )
        return n

    @classmethod
    def from_hf(cls, cfg: dict, select_layer: int = -2, where: str = "vision_tower/config.json") -> "VisionConfig":
        if "vision_config" in cfg:  # a full SigLIP (text + vision) config
            cfg = cfg["vision_config"]
        model_type = cfg.get("model_type", "siglip_vision_model")
        if "siglip" not in model_type:
            raise ConfigError(f"{where}: vision tower model_type {model_type!r} is not supported; use a SigLIP tower")
        if cfg.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_new"):
            raise ConfigError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported (SigLIP uses gelu_pytorch_tanh)")
        return cls(
            hidden_size=_need(cfg, "hidden_size", where),
            intermediate_size=_need(cfg, "intermediate_size", where),
            num_layers=_need(cfg, "num_hidden_layers", where),
            num_heads=_need(cfg, "num_attention_heads", where),
            image_size=_need(cfg, "image_size", where),
            patch_size=_need(cfg, "patch_size", where),
            num_channels=cfg.get("num_channels", 3),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
            select_layer=select_layer,
            hf=dict(cfg),
        )


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """The multimodal projector between the vision tower and the LLM."""

    projector_type: str
    vision_hidden_size: int
    llm_hidden_size: int
    layer_norm_eps: float = 1e-5
    hf: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.projector_type not in PROJECTOR_TYPES:
            raise ConfigError(
                f"mm_projector_type {self.projector_type!r} is not supported; use one of {', '.join(PROJECTOR_TYPES)}"
            )

    @property
    def downsample(self) -> bool:
        return self.projector_type.startswith("mlp_downsample")

    def tokens_per_frame(self, grid: int) -> int:
        return ((grid + 1) // 2) ** 2 if self.downsample else grid * grid


@dataclasses.dataclass(frozen=True)
class LongVILAConfig:
    """The whole LongVILA model: tower, projector, LLM and the placeholder id."""

    llm: LLMConfig
    vision: VisionConfig
    projector: ProjectorConfig
    image_token_id: int = LEGACY_IMAGE_TOKEN_ID
    hf: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.projector.tokens_per_frame(self.vision.grid)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the model computes: dtypes, attention backend, remat policy."""

    dtype: Any = jnp.float32          # compute dtype
    param_dtype: Any = jnp.float32    # storage dtype of parameters
    attn_impl: str = "auto"
    remat: str = "none"               # none | full | save_dots | save_attention


def config_from_dict(spec: dict, where: str = "model config") -> LongVILAConfig:
    """A ``LongVILAConfig`` from a preset dictionary (``configs/model/*.json``): HF configs of the three parts."""
    for key in ("llm", "vision_tower", "mm_projector"):
        if key not in spec:
            raise ConfigError(f"{where}: key {key!r} is missing; a model preset names llm, vision_tower and mm_projector")
    llm = LLMConfig.from_hf(spec["llm"], where=f"{where} [llm]")
    vision = VisionConfig.from_hf(spec["vision_tower"], select_layer=spec.get("mm_vision_select_layer", -2),
                                  where=f"{where} [vision_tower]")
    projector = ProjectorConfig(spec["mm_projector"].get("mm_projector_type"), vision.hidden_size, llm.hidden_size,
                                hf=dict(spec["mm_projector"]))
    return LongVILAConfig(llm, vision, projector, int(spec.get("image_token_id", LEGACY_IMAGE_TOKEN_ID)))
