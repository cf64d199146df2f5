"""The forward's lazy row maxima: the accumulator is rescaled only by warps whose rows' maxima moved.

The online softmax keeps a running row max ``m`` and multiplies the accumulator ``acc [64, D]`` by
``alpha = 2^(m_old - m_new)`` each step: D multiplies a row, 64 per thread and step at D = 128, on the
FMA pipe, which is the forward's busier one (run BP). With lazy maxima a row keeps its max until a
tile's scores pass it by more than :data:`GROWTH` (base 2), so its exponentials stay under
``2^GROWTH`` and its ``alpha`` is exactly 1 on the other steps; the result is the same, since out
divides ``acc`` by the row sum taken against the same max, and lse adds that max back.

On a GPU, :func:`rescale` lets each warp vote (``vote.sync.any``) on whether any of its 16 rows has
``alpha != 1`` and branch around the multiplies when none has: a branch uniform over the warp, which
Mosaic's warpgroup semantics cannot express, hence the lane-level code through ``plgpu.inline_mgpu``.
GPU interpret mode (no inline Mosaic code there) multiplies, which gives the same values.
"""

from __future__ import annotations

import numpy as np

import jax.numpy as jnp
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, llvm, scf, vector

from . import mosaic_common as mc

GROWTH = 8.0  # base-2 units a row's scores may pass its kept max by before the max moves
RESCALES = ("lazy", "always")


def lazy_max(m, m_candidate):
    """Per row: ``(m_new, grown)``, the kept max ``m`` unless ``m_candidate`` passes it by more than
    :data:`GROWTH` (a row with no visible score yet, ``m = -inf``, takes its first finite max)."""
    grown = m_candidate > m + GROWTH
    return jnp.where(grown, m_candidate, m), grown


def _warp_any(flag):
    """i32 ``flag`` (0 or 1 per thread) -> i32 1 on every lane of a warp where any lane has 1."""
    i32 = ir.IntegerType.get_signless(32)
    return llvm.inline_asm(
        i32, [flag],
        "{ .reg .pred p; setp.ne.u32 p, $1, 0; vote.sync.any.pred p, p, 0xffffffff; selp.u32 $0, 1, 0, p; }",
        "=r,r", has_side_effects=False)


def _element(register):
    """The f32 of a one-element register (``vector<1xf32>``) or the scalar itself."""
    if isinstance(register.type, ir.VectorType):
        return vector.extract(register, [], [0])
    return register


def _rescale_lanes(ctx, acc, alpha):
    """Lane-level body of :func:`rescale`: ``acc`` (WGMMA layout) times ``alpha`` (its ROW layout)
    broadcast over columns, computed only by warps where some row's ``alpha`` is not 1."""
    del ctx
    i32 = ir.IntegerType.get_signless(32)
    f32 = ir.F32Type.get()
    one = arith.constant(f32, 1.0)
    moved = None
    for register in alpha.registers.flat:
        differs = arith.cmpf(arith.CmpFPredicate.UNE, _element(register), one)
        moved = differs if moved is None else arith.ori(moved, differs)
    warp_moved = arith.cmpi(arith.CmpIPredicate.ne, _warp_any(arith.extui(i32, moved)), arith.constant(i32, 0))
    kept = list(acc.registers.flat)
    branch = scf.IfOp(warp_moved, [r.type for r in kept], has_else=True)
    with ir.InsertionPoint(branch.then_block):
        scaled = acc * alpha.broadcast_minor(acc.shape[1])
        scf.YieldOp(list(scaled.registers.flat))
    with ir.InsertionPoint(branch.else_block):
        scf.YieldOp(kept)
    registers = np.empty(acc.registers.shape, dtype=object)
    for index, value in zip(np.ndindex(registers.shape), branch.results):
        registers[index] = value
    return mgpu.FragmentedArray(_registers=registers, _layout=acc.layout, _is_signed=None)


def rescale(acc, alpha, *, lazy: bool, interpret=None):
    """``acc [64, D]`` float32 (WGMMA layout) times the per-row ``alpha [64]`` (``mc.ROW``).

    ``lazy`` (on a GPU): warps whose 16 rows all have ``alpha == 1`` skip the multiplies."""
    if not lazy or interpret is not None:
        return acc * mc.rows(alpha, acc.shape)
    call = plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA, mc.ROW),
                             return_type=plgpu.ShapeDtypeStruct(acc.shape, jnp.float32, layout=plgpu.Layout.WGMMA))
    return call(_rescale_lanes)(acc, alpha)
