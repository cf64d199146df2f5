"""``exp2`` of a score tile with part of its columns computed by a polynomial on the FMA units.

Hopper computes ``ex2`` on its special-function unit (MUFU, 16 results per clock per SM), which the
softmax of every tile waits on; the FMA units do 128 float32 operations per clock per SM. Moving a
fraction of a tile's exponentials onto the FMA units (FlashAttention-4's trick) helps when MUFU is
the kernel's limit and hurts when the FMA units are. ``POLY`` holds that fraction (0: every
exponential on MUFU, the default); the Mosaic kernels read it while tracing.

The polynomial: ``x = n + f`` with n the nearest integer (a float add of 1.5 * 2^23 rounds it) and
f in [-0.5, 0.5]; ``2^f`` by a cubic through ``2^0 = 1`` (least squares in relative error, at most
1.8e-4 against bf16's 3.9e-3); n added to the result's exponent bits. x is clamped at -127, where the
bits come out exactly 0, so masked scores (-inf) give exactly 0, as ``exp2`` does. Valid for x <= 0
(softmax arguments, ``s - max`` and ``s - lse``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

POLY = {"fraction": 0.0}
FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
COEFFICIENTS = (0.6933164641798569, 0.2419240449124914, 0.05460266536778163)  # f, f^2, f^3
ROUNDER = 12582912.0  # 1.5 * 2^23: x + ROUNDER holds round(x) in its low mantissa bits
ROUNDER_BITS = 0x4B400000  # its float32 bit pattern
FLOOR = -127.0  # 2^-127 with a zero exponent field: bits 0


def set_fraction(fraction: float):
    """The fraction of each tile's columns whose ``exp2`` the polynomial computes (one of ``FRACTIONS``)."""
    if fraction not in FRACTIONS:
        raise ValueError(f"exp2 polynomial fraction must be one of {FRACTIONS}, got {fraction!r}")
    POLY["fraction"] = fraction


def exp2_poly(x):
    """``2^x`` for float32 ``x <= 0`` with FMAs and integer ops only (see the module docstring)."""
    x = jnp.maximum(x, FLOOR)
    # the barrier keeps a compiler from folding ``(x + R) - R`` back into x (XLA does: interpret mode)
    rounded = lax.optimization_barrier(x + ROUNDER)
    f = x - (rounded - ROUNDER)
    a, b, c = COEFFICIENTS
    mantissa = 1.0 + f * (a + f * (b + f * c))
    n = lax.bitcast_convert_type(rounded, jnp.int32) - ROUNDER_BITS
    return lax.bitcast_convert_type(lax.bitcast_convert_type(mantissa, jnp.int32) + (n << 23), jnp.float32)


def poly_columns(width: int, fraction: float) -> int:
    """How many of a ``width``-column tile's last columns the polynomial takes: ``width * fraction``
    rounded down to a multiple of 16 (whole register fragments)."""
    return int(width * fraction) // 16 * 16


def exp2_tile(x):
    """``2^x`` of a float32 ``[rows, width]`` tile: the first columns on MUFU (``jnp.exp2``), the last
    ``poly_columns(width, POLY["fraction"])`` by :func:`exp2_poly`."""
    width = x.shape[-1]
    cols = poly_columns(width, POLY["fraction"])
    if cols == 0:
        return jnp.exp2(x)
    if cols == width:
        return exp2_poly(x)
    return jnp.concatenate([jnp.exp2(x[:, :width - cols]), exp2_poly(x[:, width - cols:])], axis=1)
