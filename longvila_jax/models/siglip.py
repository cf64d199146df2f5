"""SigLIP vision tower: patch embedding, learned positions, pre-norm encoder.

Frames ``[N, H, W, 3]`` (already normalized) -> features ``[N, grid*grid, vision_embed]``,
the hidden state after ``cfg.num_layers_used`` encoder layers (LongVILA takes
layer -2, the input of the last layer; SigLIP has no CLS token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax import kernels
from longvila_jax.models.config import RuntimeConfig, VisionConfig
from longvila_jax.models.layers import Dense, LayerNorm, param
from longvila_jax.models.stacking import scan_layers, stack_layers


class PatchEmbedding(nnx.Module):
    """Non-overlapping ``patch x patch`` patches -> linear -> plus a learned position table."""

    def __init__(self, cfg: VisionConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        # kernel rows are ordered (patch_row, patch_col, channel).
        self.patch = Dense(p * p * c, d, ("patch", "vision_embed"), use_bias=True,
                           dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.position_embedding = param(rngs, (cfg.grid * cfg.grid, d), ("vision_pos", "vision_embed"), rt.param_dtype)
        self.cfg, self.dtype = cfg, rt.dtype

    def __call__(self, frames: jax.Array) -> jax.Array:
        n, h, w, c = frames.shape
        p, grid = self.cfg.patch_size, self.cfg.grid
        if (h, w) != (self.cfg.image_size, self.cfg.image_size) or c != self.cfg.num_channels:
            raise ValueError(
                f"pixel_values have frames of shape {(h, w, c)}, the vision tower expects "
                f"{(self.cfg.image_size, self.cfg.image_size, self.cfg.num_channels)}; resize the frames"
            )
        patches = frames[:, : grid * p, : grid * p].reshape(n, grid, p, grid, p, c)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, p * p * c)
        return self.patch(patches) + self.position_embedding[...].astype(self.dtype)


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention with biases."""

    def __init__(self, cfg: VisionConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        kw = dict(use_bias=True, dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.q_proj = Dense(d, d, ("vision_embed", "heads"), **kw)
        self.k_proj = Dense(d, d, ("vision_embed", "heads"), **kw)
        self.v_proj = Dense(d, d, ("vision_embed", "heads"), **kw)
        self.out_proj = Dense(d, d, ("heads", "vision_embed"), **kw)
        self.num_heads, self.head_dim = cfg.num_heads, d // cfg.num_heads
        self.attn_impl = rt.attn_impl

    def __call__(self, x):
        n, t, d = x.shape
        split = lambda y: y.reshape(n, t, self.num_heads, self.head_dim)
        # frames are independent: per-frame attention needs no sequence parallelism, and with no
        # segment ids or positions the full mask lets the cuDNN backend serve D=72 on GPU.
        out, _ = kernels.flash_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                         causal=False, impl=self.attn_impl)
        return self.out_proj(out.reshape(n, t, d))


class VisionMLP(nnx.Module):
    """fc2(gelu_tanh(fc1(x)))."""

    def __init__(self, cfg: VisionConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        kw = dict(use_bias=True, dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, ("vision_embed", "vision_mlp"), **kw)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, ("vision_mlp", "vision_embed"), **kw)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class EncoderLayer(nnx.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: VisionConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        ln = dict(eps=cfg.layer_norm_eps, dtype=rt.dtype, param_dtype=rt.param_dtype, axis_name="vision_embed")
        self.layer_norm1 = LayerNorm(cfg.hidden_size, **ln)
        self.self_attn = VisionAttention(cfg, rt, rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, **ln)
        self.mlp = VisionMLP(cfg, rt, rngs)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipVisionTower(nnx.Module):
    """Embeddings and the scanned encoder; only the layers up to the selected one run."""

    def __init__(self, cfg: VisionConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        self.config, self.runtime = cfg, rt
        self.embeddings = PatchEmbedding(cfg, rt, rngs)
        self.layers = stack_layers(lambda r: EncoderLayer(cfg, rt, r), cfg.num_layers, rngs)

    def __call__(self, frames: jax.Array) -> jax.Array:
        """``[N, H, W, 3]`` -> ``[N, grid*grid, vision_embed]``."""
        hidden = self.embeddings(frames.astype(self.runtime.dtype))
        return scan_layers(self.layers, hidden, num_layers=self.config.num_layers_used, remat=self.runtime.remat)
