"""Tensor layouts between PyTorch (Hugging Face) and the JAX modules.

Each layout maps an HF tensor to the JAX parameter (``to_jax``), back
(``to_hf``, exact: only transposes and reshapes), and a JAX shape to the HF
shape a checkpoint must have (``hf_shape``), for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Copy:
    def to_jax(self, x: np.ndarray) -> np.ndarray:
        return x

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return x

    def hf_shape(self, shape: tuple) -> tuple:
        return tuple(shape)


@dataclass(frozen=True)
class Linear:
    """torch ``weight [out, in]`` <-> ``kernel [in, out]``."""

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        return x.T

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.T)

    def hf_shape(self, shape: tuple) -> tuple:
        return tuple(shape[::-1])


@dataclass(frozen=True)
class PatchConv:
    """Conv2d ``weight [D, C, p, p]`` <-> Dense ``kernel [p*p*C, D]`` with rows ordered (row, col, channel)."""

    patch: int
    channels: int

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(2, 3, 1, 0).reshape(self.patch * self.patch * self.channels, x.shape[0])

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(self.patch, self.patch, self.channels, -1).transpose(3, 2, 0, 1))

    def hf_shape(self, shape: tuple) -> tuple:
        return (shape[-1], self.channels, self.patch, self.patch)
