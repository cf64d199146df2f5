"""Multimodal projectors: vision features ``[N, grid*grid, vision_embed]`` -> ``[N, T, embed]``.

``mlp_downsample`` (and its twin ``mlp_downsample_2x2_fix``): pad an odd grid
with zeros at the end, concatenate each 2x2 block in the order (2i,2j),
(2i,2j+1), (2i+1,2j), (2i+1,2j+1) to one token (row-major over blocks), then
LayerNorm(4*vision_embed) -> Linear -> exact GELU -> Linear.
``linear``: one Linear.  ``mlp2x_gelu``: Linear -> exact GELU -> Linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax.models.config import ProjectorConfig, RuntimeConfig
from longvila_jax.models.layers import Dense, LayerNorm


def downsample_2x2(features: jax.Array, grid: int) -> jax.Array:
    """``[N, grid*grid, C]`` -> ``[N, ceil(grid/2)**2, 4C]`` by 2x2 concatenation."""
    n, _, c = features.shape
    half = (grid + 1) // 2
    image = features.reshape(n, grid, grid, c)
    pad = 2 * half - grid
    image = jnp.pad(image, ((0, 0), (0, pad), (0, pad), (0, 0)))
    blocks = image.reshape(n, half, 2, half, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, half * half, 4 * c)


class Projector(nnx.Module):
    """The projector named by ``cfg.projector_type``."""

    def __init__(self, cfg: ProjectorConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dv, d = cfg.vision_hidden_size, cfg.llm_hidden_size
        kw = dict(use_bias=True, dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        if cfg.downsample:
            self.norm = LayerNorm(4 * dv, eps=cfg.layer_norm_eps, dtype=rt.dtype, param_dtype=rt.param_dtype,
                                  axis_name="proj_in")
            self.fc1 = Dense(4 * dv, d, ("proj_in", "proj_hidden"), **kw)
            self.fc2 = Dense(d, d, ("proj_hidden", "embed"), **kw)
        elif cfg.projector_type == "mlp2x_gelu":
            self.norm = None
            self.fc1 = Dense(dv, d, ("proj_in", "proj_hidden"), **kw)
            self.fc2 = Dense(d, d, ("proj_hidden", "embed"), **kw)
        else:  # linear
            self.norm = None
            self.fc1 = Dense(dv, d, ("proj_in", "embed"), **kw)
            self.fc2 = None

    def __call__(self, features: jax.Array, grid: int) -> jax.Array:
        x = features
        if self.cfg.downsample:
            x = self.norm(downsample_2x2(x, grid))
        x = self.fc1(x)
        if self.fc2 is not None:
            x = self.fc2(jax.nn.gelu(x, approximate=False))
        return x
