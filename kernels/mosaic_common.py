"""Pieces every Mosaic GPU attention kernel shares: SMEM transforms, layouts, the tile mask,
and the memory warpgroup's streaming loop.

Each kernel runs three Pallas threads (warpgroups) per CTA: threads 0 and 1
compute, each on 64 rows of the CTA's resident block (128 rows); thread 2
streams the other operand's blocks (named by a visit list, see
:mod:`.mosaic_plan`) through ``stages`` SMEM slots with TMA. A slot is
refilled once both compute threads have arrived on its ``consumed`` barrier.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .mosaic_plan import FULL, HEADER, KIND_BITS, POSITIONS, WHOLE
from .row_stats import LOG2E

ROWS = 64  # rows per compute warpgroup (the wgmma M)
COMPUTE = 2  # compute warpgroups per CTA
BLOCK = ROWS * COMPUTE  # resident rows per CTA; lengths are padded to a multiple of it
MEMORY = COMPUTE  # the thread index of the memory warpgroup
LN2 = math.log(2.0)

ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per row of a [64, n] wgmma tile
COL = plgpu.Layout.WGMMA.reduce(0)  # one value per column


class Tuning(NamedTuple):
    """Per kernel: rows of each streamed block (64 or 128) and SMEM slots that hold them."""

    block: int
    stages: int


def mma_transforms(dtype):
    """The 128-byte swizzle and matching tiling that wgmma operands in SMEM need."""
    swizzle = 128
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def rows(x, shape):
    """A per-row vector (``ROW`` layout) broadcast to ``shape``."""
    return jnp.broadcast_to(x[:, None], shape)


def cols(x, shape):
    """A per-column vector (``COL`` layout) broadcast to ``shape``."""
    return jnp.broadcast_to(x[None, :], shape)


def visible(q_seg, q_pos, kv_seg, kv_pos, shape, *, causal: bool, q_on_rows: bool):
    """Boolean tile of ``shape``: the mask contract of :mod:`.mask` on one tile.

    ``q_on_rows``: queries index the rows (forward, dQ) or the columns (dK/dV). ``q_seg`` and
    ``kv_seg`` None: a tile of one segment on both sides (``POSITIONS``), where only the position
    test decides.
    """
    q_b, kv_b = (rows, cols) if q_on_rows else (cols, rows)
    mask = None
    if q_seg is not None:
        q_seg_t = q_b(q_seg, shape)
        mask = (q_seg_t == kv_b(kv_seg, shape)) & (q_seg_t != 0)
    if causal:
        before = kv_b(kv_pos, shape) <= q_b(q_pos, shape)
        mask = before if mask is None else mask & before
    return mask


def _switch_mask(x, mask_kind, full, positions, *, causal: bool, positions_mask: bool):
    """``x`` as it is (``WHOLE``), through ``positions`` (``POSITIONS``, causal only) or ``full``.
    ``positions_mask`` False: lists without ``POSITIONS`` tiles (``mosaic_backend.MASK_TILES`` "full"),
    and a two-way branch."""
    if not (causal and positions_mask):  # a non-causal tile of one segment is WHOLE, never POSITIONS
        return lax.cond(mask_kind == WHOLE, lambda x: x, full, x)
    assert (WHOLE, POSITIONS, FULL) == (0, 1, 2)
    return lax.switch(mask_kind, [lambda x: x, positions, full], x)


def mask_tile(x, fill, mask_kind, streamed_tokens, resident_seg, resident_pos, *, causal: bool, q_on_rows: bool,
              positions_mask: bool = True):
    """``x`` where the mask keeps a pair, else ``fill``; the elementwise mask by ``mask_kind`` (a
    ``lax.switch``): none on ``WHOLE`` tiles, positions only on ``POSITIONS`` ones. ``streamed_tokens``:
    SMEM ``[2, n]`` (segment ids, positions) of the streamed block, the tile's columns; the resident
    ids/positions (``ROW``) are its rows. ``q_on_rows``: the resident side is the queries (forward, dQ)
    or the keys (dK/dV); ``positions_mask``: see :func:`_switch_mask`."""

    def masked(x, segments: bool):
        seg = plgpu.load(streamed_tokens.at[0], layout=COL) if segments else None
        pos = plgpu.load(streamed_tokens.at[1], layout=COL)
        resident = resident_seg if segments else None
        if q_on_rows:
            keep = visible(resident, resident_pos, seg, pos, x.shape, causal=causal, q_on_rows=True)
        else:
            keep = visible(seg, pos, resident, resident_pos, x.shape, causal=causal, q_on_rows=False)
        return jnp.where(keep, x, fill)

    return _switch_mask(x, mask_kind, lambda x: masked(x, True), lambda x: masked(x, False), causal=causal,
                        positions_mask=positions_mask)


def mask_tile_from_smem(x, fill, mask_kind, row_tokens, col_tokens, *, causal: bool, q_on_rows: bool,
                        positions_mask: bool = True):
    """:func:`mask_tile` with both sides' tokens in SMEM (``[2, n]`` each: segment ids, positions, of the
    tile's rows and of its columns), loaded only inside the masked branches, so no token vector stays in
    registers across a loop."""

    def masked(x, segments: bool):
        row_side = [plgpu.load(row_tokens.at[i], layout=ROW) if segments or i else None for i in range(2)]
        col_side = [plgpu.load(col_tokens.at[i], layout=COL) if segments or i else None for i in range(2)]
        q_side, kv_side = (row_side, col_side) if q_on_rows else (col_side, row_side)
        keep = visible(*q_side, *kv_side, x.shape, causal=causal, q_on_rows=q_on_rows)
        return jnp.where(keep, x, fill)

    return _switch_mask(x, mask_kind, lambda x: masked(x, True), lambda x: masked(x, False), causal=causal,
                        positions_mask=positions_mask)


def matmul(a, b, shape, init=None, *, interpret=None):
    """``a @ b`` (+ ``init``) on the tensor cores: float32 ``shape``, waited for.

    ``a`` an SMEM ref or a 16-bit register array in wgmma layout; ``b`` an SMEM ref
    (use ``ref.T`` for a transposed operand). On the GPU ``init`` seeds the accumulator
    (no second register tile); GPU interpret mode cannot seed one, so there it is added.
    """
    if init is not None and interpret is not None:
        return init + matmul(a, b, shape)
    if init is None:
        def run(acc):
            plgpu.wgmma(acc, a, b)
            return acc[...]

        return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))

    def accumulate(acc):
        plgpu.wgmma(acc, a, b)

    return pl.run_state(accumulate)(plgpu.ACC.init(init))


def chain(shape, pairs, *, interpret=None):
    """``sum(a @ b for a, b in pairs)``, float32 ``shape``, in one accumulator: the products issued back
    to back, then waited for once; ``a``, ``b`` SMEM refs as in :func:`matmul`."""
    if interpret is not None:
        total = matmul(*pairs[0], shape)
        for a, b in pairs[1:]:
            total = matmul(a, b, shape, init=total, interpret=interpret)
        return total

    def run(acc):
        for a, b in pairs:
            plgpu.wgmma(acc, a, b)
        return acc[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def with_step_accumulators(run, tile, head_dim):
    """``run(s_acc, dp_acc, dv_acc, dk_acc)`` with a dK/dV step's four float32 wgmma accumulators: s and
    dp of ``tile``, dv and dk of ``[ROWS, head_dim]``."""
    shapes = (tile, tile, (ROWS, head_dim), (ROWS, head_dim))
    return pl.run_scoped(run, *[plgpu.ACC(shape, jnp.float32) for shape in shapes])


def zeros(shape):
    """A float32 zero tile in the wgmma accumulator layout."""
    return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)


def accumulate(*products, interpret=None):
    """``init + a @ b`` for each ``(init, a, b)`` of ``products``: all issued back to back, then
    waited for together (one wait, the tensor cores never idle between them). ``init`` a float32
    wgmma-layout tile (:func:`zeros` for a plain product); ``a``, ``b`` as in :func:`matmul`."""
    if interpret is not None:
        return tuple(matmul(a, b, init.shape, init=init, interpret=interpret) for init, a, b in products)

    def run(accs):
        for acc, (_, a, b) in zip(accs, products):
            plgpu.wgmma(acc, a, b)

    return pl.run_state(run)(tuple(plgpu.ACC.init(init) for init, _, _ in products))


def add_to_gmem(value, smem, gmem, *, in_flight=0):
    """``gmem += value`` (float32) through ``smem``: a TMA reduce-add, left in flight. First waits
    until at most ``in_flight`` earlier copies of this thread still read their SMEM (those into
    other buffers than ``smem``). GPU interpret mode has no TMA reductions: see
    :func:`add_to_gmem_interpret`."""
    plgpu.wait_smem_to_gmem(in_flight, wait_read_only=True)
    smem[...] = value
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(smem, gmem, reduction_op="add")


def add_to_gmem_interpret(value, smem, gmem, loaded):
    """:func:`add_to_gmem` for GPU interpret mode: a read-modify-write through ``smem`` (``loaded``:
    its copy barrier); one thread writes these rows at a time (the dQ thread)."""
    plgpu.copy_gmem_to_smem(gmem, smem, loaded)
    plgpu.barrier_wait(loaded)
    smem[...] = smem[...] + value
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(smem, gmem)
    plgpu.wait_smem_to_gmem(0)


def list_entry(list_s, i):
    """Flat entry ``i`` of a visit list in SMEM (``[rows, row_len]``, see :mod:`.mosaic_plan`)."""
    row_len = list_s.shape[-1]
    return list_s[i // row_len, lax.rem(i, row_len)]


def visited(list_s, j):
    """``(block, mask_kind)`` of the j-th streamed block a visit list names (:mod:`.mosaic_plan`)."""
    entry = list_entry(list_s, HEADER + j)
    return lax.shift_right_logical(entry, KIND_BITS), entry & ((1 << KIND_BITS) - 1)


def matmuls(*operands):
    """Several independent ``a @ b`` issued back to back, then waited for together, so the
    tensor cores run them without the warpgroup stalling between; ``(a, b, shape)`` each."""

    def run(*accs):
        for acc, (a, b, _) in zip(accs, operands):
            plgpu.wgmma(acc, a, b)
        return tuple(acc[...] for acc in accs)

    return pl.run_scoped(run, *[plgpu.ACC(shape, jnp.float32) for _, _, shape in operands])


def register_operand(x, staging, *, interpret=None):
    """A 16-bit register tile as the wgmma ``a`` operand. On the GPU it goes straight from
    registers; GPU interpret mode only takes SMEM operands, so there it is staged through
    ``staging`` (an SMEM ref allocated only when interpreting, see ``staging_scratch``)."""
    if interpret is None:
        return x
    staging[...] = x
    plgpu.commit_smem()
    return staging


def staging_scratch(shape, dtype, *, interpret=None):
    """The SMEM scratch ``register_operand`` needs: per compute thread, only when interpreting."""
    if interpret is None:
        return plgpu.SMEM((1, 8, 64), dtype)  # unused placeholder, 1 KiB
    return plgpu.SMEM((COMPUTE, *shape), dtype, transforms=mma_transforms(dtype))


def stream_tiles(start, count, issue, consumed, stages: int, v_consumed=None):
    """The memory warpgroup's copies of ``count`` visited blocks: ``issue(j, slot)`` those of the
    j-th into ``slot = (start + j) % stages`` once the compute threads released the slot (slots are
    counted from ``start``, so one CTA can stream several items in a row).

    With ``v_consumed`` (barriers like ``consumed``), ``issue`` is a pair ``(issue_k, issue_v)``:
    the second part of a slot is refilled only once ``v_consumed`` released it (the pipelined
    forward reads v_{j-1} while k_j is already in use)."""
    issue_k, issue_v = issue if v_consumed is not None else (issue, None)

    def step(j, carry):
        g = start + j
        slot = lax.rem(g, stages)

        @pl.when(g >= stages)
        def _():
            plgpu.barrier_wait(consumed.at[slot])

        issue_k(j, slot)
        if v_consumed is not None:
            @pl.when(g >= stages)
            def _():
                plgpu.barrier_wait(v_consumed.at[slot])

            issue_v(j, slot)
        return carry

    lax.fori_loop(0, count, step, None)


def drain(steps, consumed, stages: int, v_consumed=None):
    """After ``steps`` streamed blocks: wait for the last releases, so that every completion of
    ``consumed`` (and ``v_consumed``) is awaited before the CTA exits."""

    def wait(g, carry):
        plgpu.barrier_wait(consumed.at[lax.rem(g, stages)])
        if v_consumed is not None:
            plgpu.barrier_wait(v_consumed.at[lax.rem(g, stages)])
        return carry

    lax.fori_loop(jnp.maximum(steps - stages, 0), steps, wait, None)


def stream(count, issue, consumed, stages: int):
    """The memory warpgroup's loop for one item per CTA (the dK/dV kernel): :func:`stream_tiles`
    from slot 0, then :func:`drain`. (The forward and dQ kernels: :mod:`.mosaic_schedule`.)"""
    stream_tiles(0, count, issue, consumed, stages)
    drain(count, consumed, stages)


def visit_list(list_ref, list_s, list_bar, wg):
    """The memory thread copies this CTA's visit list (``list_ref``, GMEM) into ``list_s``; every
    thread waits for it. Returns ``(count, resident)``: how many tiles to visit, and the resident
    block they belong to."""

    @pl.when(wg == MEMORY)
    def _():
        plgpu.copy_gmem_to_smem(list_ref, list_s, list_bar.at[0])

    plgpu.barrier_wait(list_bar.at[0])
    return list_entry(list_s, 0), list_entry(list_s, 1)


def memory_thread(wg, count, issue, consumed, stages: int):
    """The body of thread ``MEMORY``: few registers (``REGISTER_SPLIT``), then :func:`stream`."""

    @pl.when(wg == MEMORY)
    def _():
        registers(compute=False)
        stream(count, issue, consumed, stages)


def key_block_issuers(kv_block, gmem, smem, bars, group, separate_v=False):
    """``issue(b, h, list, j, slot)`` for :func:`.mosaic_schedule.memory_thread` over key blocks
    (forward, dQ): the j-th block that ``list`` (an SMEM visit list) names, of query head ``h``'s kv
    head: its k, key tokens and v. ``gmem``/``smem``/``bars``: ``(k, tokens, v)`` each.
    ``separate_v``: a pair ``(issue k and tokens, issue v)`` instead."""

    def copier(parts):
        def issue(b, h, list_s, j, slot):
            rows = pl.ds(visited(list_s, j)[0] * kv_block, kv_block)
            kvh = h // group
            sources = (gmem[0].at[b, rows, kvh], gmem[1].at[b, :, rows], gmem[2].at[b, rows, kvh])
            for part in parts:
                plgpu.copy_gmem_to_smem(sources[part], smem[part].at[slot], bars[part].at[slot])

        return issue

    return (copier((0, 1)), copier((2,))) if separate_v else copier((0, 1, 2))


def copy_in(copies):
    """Issue TMA copies ``(src, dst, barrier)`` together, then wait for every one."""
    for src, dst, bar in copies:
        plgpu.copy_gmem_to_smem(src, dst, bar)
    for _, _, bar in copies:
        plgpu.barrier_wait(bar)


def thread_index():
    return lax.axis_index("wg")


# Registers per thread (compute, memory): 2 x 128 x compute + 128 x memory fits the 64Ki of an SM. (240/24
# measured level or slower on the split backward's kernels, runs I and AA: kernels/NOTES.md.)
REGISTER_SPLIT = (232, 40)


def registers(compute: bool):
    """Give the compute warpgroups most of the register file (``REGISTER_SPLIT``)."""
    compute_regs, memory_regs = REGISTER_SPLIT
    if compute:
        plgpu.set_max_registers(compute_regs, action="increase")
    else:
        plgpu.set_max_registers(memory_regs, action="decrease")


def kernel(body, *, name, out_type, scratch_types, grid, grid_names=("b", "r", "h"), interpret=None):
    """``plgpu.kernel`` with the three-thread layout of this module (grid names ``b, r, h`` unless
    given); ``name`` names the kernel in profiles and in ``MOSAIC_GPU_DUMP_TO`` dumps."""
    return plgpu.kernel(body, out_type=out_type, scratch_types=scratch_types, grid=grid,
                        grid_names=grid_names, num_threads=COMPUTE + 1, thread_name="wg", kernel_name=name,
                        compiler_params=plgpu.CompilerParams(approx_math=True), interpret=interpret)


def program_ids():
    return lax.axis_index("b"), lax.axis_index("r"), lax.axis_index("h")

