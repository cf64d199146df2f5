"""The Mosaic GPU fused backward with a dQ warpgroup: dK, dV and dQ in one kernel, s and dp computed once.

Grid and visit lists as :func:`.mosaic_backward.dkdv` (one CTA per key block of 128 and kv head, the
GQA group's query heads in turn, 64-query blocks). Threads 0 and 1 own 64 keys each and run the
dK/dV loop (p computed while dp is on the tensor cores); each also puts its 16-bit ds tile
``[keys, queries]`` into SMEM, one buffer per step parity. Thread 2 streams q, dout, the query tokens
and stats as the split kernel's memory thread does, and between those copies computes each step's dQ
share over the CTA's 128 keys, ``scale * ds^T @ k``, in column chunks of D (one float32
accumulator), and adds it to a float32 dQ buffer in GMEM by TMA reduce-adds. The dQ products, their
SMEM staging and the reduce-adds so stay off the compute threads' path (they only wait, two steps
later, for thread 2 to be done reading a ds buffer): the column-split kernel of runs AR-AS lost 1.1 us
per step to them.

Measured on an H200 (BENCHMARKS.md, runs BL-BQ, dp issued after p): 1.06x the split backward's fwd+bwd
at 32k causal, 1.02-1.04x at 8k; the ``mosaic`` backend's default from 8,192 keys on. Registers bound it (see
``REGISTERS``; runs BD-BF: 1.96 us per CTA step at 32k if the compute threads were not serialized, 2.74
as they are). dQ's float32 sums come in a different order each run (not bit-reproducible; the split
backward is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import mosaic_common as mc
from .mosaic_backward import query_blocks

# columns of D per dQ product: 64 (a [64, 64] float32 accumulator, 32 registers a thread) or 32 (16)
DQ_CHUNK = 64
# registers per thread (compute threads, thread 2): 2 x compute + thread 2 at most 504 (168 x 3 threads).
# A region needs more registers than 24 + the wgmma accumulators ptxas keeps at once (it places them from
# R24 up): the compute threads' loop with s and dp in flight together 224 before ptxas stops serializing
# every wgmma of the kernel (C7512), with dp issued after p 208 (``DP_ISSUES``); thread 2 64 for 64-column
# chunks, 48 for 32-column ones. With s and dp together neither pair fits: 216/72 with 64 columns runs
# serialized, 224/56 with 32 columns runs four chunks in series per step; the first was faster (run BC: 525
# vs 454 TFLOP/s at 32k causal).
REGISTERS = (216, 72)
# dk's ``ds`` operand: "registers" (the 16-bit tile the thread just computed) or "smem" (the copy it put
# there for thread 2; its registers are then free while dv and dk run)
DS_OPERANDS = ("registers", "smem")
# The compute threads' tiles: "keys" (``s^T = k q^T``, keys on the rows: p and ds are register operands
# of dv and dk, lse and delta per column, 16 registers each) or "queries" (``s = q k^T`` as FlashAttention-3
# lays it out: lse and delta per row, 2 registers each; p and ds go through SMEM, dv and dk read them
# there transposed, so no 16-bit tile stays in registers while those products run).
TILE_ROWS = ("keys", "queries")
# Where the compute threads' loop-invariant wgmma descriptors (k's, v's, p's tiles) come from: "hoisted"
# (ptxas computes them once and keeps up to 20 64-bit descriptors live across the loop: 64-104 B of spills
# at 216-224 registers, runs BD-BE) or "per_step" (recomputed each step from an index the compilers cannot
# prove constant: a few integer operations a step; no spills at 216 or 224). Neither moves the 224 below
# which ptxas serializes the compute threads' wgmmas (C7512), in either tile layout.
DESCRIPTORS = ("hoisted", "per_step")
# When the compute threads issue dp's product: "with_s" (s and dp issued together, p computed while dp
# runs) or "after_p" (s waited for, p computed and made 16-bit, then dp issued). With "with_s" ptxas places
# the four accumulators (s, dp 32 registers each, dv, dk 64) as one 192-register block above R24 and
# serializes every wgmma below 224 registers (C7512); with "after_p" s and dp are never in flight together
# and run BE's PTX so edited assembles unserialized, without spills, at 216/72 and 208/88; on the GPU (run BI)
# ptxas confirms it and fwd+bwd gains 1.7-2.8% at 32k causal, so "after_p" is the backend's default
# (``mosaic_backend.DQ_THREAD_DEFAULT``; this function's own default stays "with_s").
DP_ISSUES = ("with_s", "after_p")
# Where dQ gets its softmax scale: "thread2" (each chunk multiplied before it is staged) or "after" (the
# caller multiplies the float32 sum as it casts it: 32 fewer multiplies and registers a chunk for thread 2).
DQ_SCALES = ("thread2", "after")
# Diagnostics for the bench (dQ is then wrong): "no_add" skips thread 2's reduce-adds, "no_dq" all of
# its dQ work (it only hands the ds buffers back).
PROBES = ("none", "no_add", "no_dq")
# How k sits in SMEM: "transposed" (``[D, keys]``, from an XLA transpose of k before the kernel: a dQ product
# reads any 32 rows of D as its K-major ``b`` operand) or "rows" (``[keys, D]`` as k is in GMEM, no transpose:
# the compute threads read it as the K-major ``a`` of ``s^T = k q^T`` and a dQ product reads a 64-column slice,
# one swizzle tile wide, as its N-major ``b``; 64-column chunks only).
K_LAYOUTS = ("transposed", "rows")
# SMEM slots for q/dout, exactly (dk leaves through slots 0 and 1): with ds by parity (32 KiB) and the dQ
# staging (32 KiB) beside k, v and two slots the CTA holds about 197 KiB of the 227 KiB it may have (213
# with queries on the rows, whose p tiles take 16 more); a third slot does not fit at D = 128.
STAGES = 2


def supports(head_dim: int, q_block: int, stages: int) -> bool:
    """Whether :func:`dkdv_dq` runs this tuning: 64-query blocks (one wgmma M for dQ), D of 64 or 128,
    ``STAGES`` slots (dk leaves through q's, one per compute thread)."""
    return q_block == mc.ROWS and head_dim in (64, 128) and stages == STAGES


def dkdv_dq(q, k, v, dout, stats, q_tokens, kv_tokens, lists, dq_acc, *, causal: bool, scale: float,
            tuning: mc.Tuning, chunk: int = DQ_CHUNK, registers: tuple[int, int] = REGISTERS,
            ds_operand: str = "registers", tile_rows: str = "keys", probe: str = "none",
            descriptors: str = "per_step", dq_scale: str = "thread2", dp_issue: str = "with_s",
            k_layout: str = "transposed", positions_mask: bool = True, interpret=None):
    """Padded inputs (as :func:`.mosaic_backward.dkdv`) -> ``(dk, dv)`` like k, v; adds dQ to
    ``dq_acc`` (a zeroed float32 ``jax.Ref`` like q). ``lists``: per key block, the visited 64-query
    blocks. ``chunk``: see ``DQ_CHUNK``; ``registers``: see ``REGISTERS``; ``ds_operand``: see
    ``DS_OPERANDS`` ("smem" only with ``tile_rows`` "queries"); ``tile_rows``: see ``TILE_ROWS``;
    ``probe``: see ``PROBES``; ``descriptors``: see ``DESCRIPTORS``;
    ``dq_scale``: see ``DQ_SCALES`` (with "after", ``dq_acc`` receives ``ds^T @ k`` unscaled); ``dp_issue``: see
    ``DP_ISSUES``; ``k_layout``: see ``K_LAYOUTS``."""
    q_block, stages = tuning
    batch, q_len, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = q_heads // kv_heads
    n_k = k.shape[1] // mc.BLOCK
    dtype = q.dtype
    scale2 = scale * mc.LOG2E
    by_queries = tile_rows == "queries"
    tile = (q_block, mc.ROWS) if by_queries else (mc.ROWS, q_block)  # queries x keys, or keys x queries
    if not supports(head_dim, q_block, stages):
        raise ValueError(f"the fused dK/dV/dQ kernel needs 64-query blocks, D of 64 or 128 and "
                         f"{STAGES} slots, got block={q_block}, D={head_dim}, stages={stages}")
    if chunk not in (32, 64) or ds_operand not in DS_OPERANDS:
        raise ValueError(f"the fused dK/dV/dQ kernel: chunk must be 32 or 64 and ds_operand one of {DS_OPERANDS}, "
                         f"got {chunk} and {ds_operand!r}")
    if tile_rows not in TILE_ROWS or probe not in PROBES or (by_queries and ds_operand != "smem"):
        raise ValueError(f"the fused dK/dV/dQ kernel: tile_rows must be one of {TILE_ROWS} (\"queries\" reads ds "
                         f"from SMEM: ds_operand 'smem') and probe one of {PROBES}, got {tile_rows!r}, "
                         f"{ds_operand!r}, {probe!r}")
    for name, value, allowed in (("descriptors", descriptors, DESCRIPTORS), ("dq_scale", dq_scale, DQ_SCALES),
                                 ("dp_issue", dp_issue, DP_ISSUES), ("k_layout", k_layout, K_LAYOUTS)):
        if value not in allowed:
            raise ValueError(f"the fused dK/dV/dQ kernel: {name} must be one of {allowed}, got {value!r}")
    compute_regs, dq_regs = registers
    if 2 * compute_regs + dq_regs > 504 or min(registers) < 24 or any(n % 8 for n in registers):
        raise ValueError(f"the fused dK/dV/dQ kernel: registers (compute, thread 2) must be multiples of 8, "
                         f"at least 24, with 2 x compute + thread 2 <= 504, got {registers}")
    chunk = min(chunk, head_dim)
    k_rows_first = k_layout == "rows"
    if k_rows_first and chunk % 64:
        raise ValueError(f"the fused dK/dV/dQ kernel: k_layout 'rows' reads k in 64-column slices (one swizzle "
                         f"tile), so chunk must be 64, got {chunk}")
    n_chunks = head_dim // chunk

    def body(q_ref, k_in_ref, v_ref, do_ref, st_ref, qt_ref, kt_ref, list_ref, dq_ref, dk_ref, dv_ref,
             k_s, v_s, kt_s, q_s, do_s, qt_s, st_s, list_s, p_s, ds_s, dq_s,
             list_bar, k_bar, v_bar, kt_bar, q_bar, do_bar, qt_bar, st_bar, consumed,
             ds_ready, ds_free, loops_done, dq_loaded):
        b, r, hkv = mc.program_ids()
        wg = mc.thread_index()
        count, kb = mc.visit_list(list_ref.at[b, r], list_s, list_bar, wg)
        n_steps = group * count

        block_of, issue = query_blocks(b, hkv, group, count, q_block, list_s, (q_ref, qt_ref, st_ref, do_ref),
                                       (q_s, qt_s, st_s, do_s), (q_bar, qt_bar, st_bar, do_bar))

        def add_dq(j):
            """Step ``j``'s dQ share, ``scale * ds^T k`` over both threads' keys, added to ``dq_ref``."""
            parity = lax.rem(j, 2)
            h, qb, _ = block_of(j)
            plgpu.barrier_wait(ds_ready.at[parity])
            if probe == "no_dq":
                plgpu.barrier_arrive(ds_free.at[parity])
                return

            # a loop, not unrolled: the operand descriptors of every chunk, hoisted out of the step
            # loop, would take more registers than thread 2 has (run BA: 180 bytes of thread 2's spills)
            def chunk_step(c, carry):
                cols = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
                ds_tiles = [ds_s.at[parity, t] if by_queries else ds_s.at[parity, t].T for t in range(mc.COMPUTE)]
                k_cols = [k_s.at[t, :, cols] if k_rows_first else k_s.at[t, cols, :].T  # [keys, chunk]
                          for t in range(mc.COMPUTE)]
                part = mc.chain((q_block, chunk), list(zip(ds_tiles, k_cols)), interpret=interpret)

                @pl.when(c == n_chunks - 1)  # every product that reads this parity's ds is done
                def _():
                    plgpu.barrier_arrive(ds_free.at[parity])

                target = dq_ref.at[b, pl.ds(qb * q_block, q_block), h, cols]
                staging = dq_s.at[lax.rem(j * n_chunks + c, 2)]  # the two buffers alternate
                if dq_scale == "thread2":
                    part = part * scale
                if probe == "no_add":  # staged, not added
                    staging[...] = part
                    plgpu.commit_smem()
                elif interpret is None:  # the other staging buffer's reduce-add may stay in flight
                    mc.add_to_gmem(part, staging, target, in_flight=1)
                else:  # one thread writes dQ in a CTA, and interpret mode runs CTAs one at a time
                    mc.add_to_gmem_interpret(part, staging, target, dq_loaded.at[0])
                return carry

            # (a bound the compiler cannot see is constant, so that it does not unroll the loop either)
            lax.fori_loop(0, n_chunks + jnp.minimum(count, 0), chunk_step, None)

        @pl.when(wg == mc.MEMORY)
        def _():
            plgpu.set_max_registers(dq_regs, action="decrease")
            for j in range(stages):  # the first slots are free
                @pl.when(j < n_steps)
                def _():
                    issue(j, j)

            def step(j, carry):
                add_dq(j)
                slot = lax.rem(j, stages)
                plgpu.barrier_wait(consumed.at[slot])  # every release is awaited, the last ones too

                @pl.when(j + stages < n_steps)
                def _():
                    issue(j + stages, slot)

                return carry

            lax.fori_loop(0, n_steps, step, None)
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg < mc.MEMORY)
        def _():
            plgpu.set_max_registers(compute_regs, action="increase")
            k_rows = pl.ds(kb * mc.BLOCK + wg * mc.ROWS, mc.ROWS)
            k_src = k_in_ref.at[b, k_rows, hkv] if k_rows_first else k_in_ref.at[b, hkv, :, k_rows]
            mc.copy_in([(k_src, k_s.at[wg], k_bar.at[wg]),
                        (v_ref.at[b, k_rows, hkv], v_s.at[wg], v_bar.at[wg]),
                        (kt_ref.at[b, :, k_rows], kt_s.at[wg], kt_bar.at[wg])])

            def probs(s, slot, mask_kind):
                """``exp2(s * scale2 - lse2)``, masked: lse2 per row (queries on rows) or per column."""
                lse2 = plgpu.load(st_s.at[slot, 0], layout=mc.ROW if by_queries else mc.COL)
                p = jnp.exp2(s * scale2 - (mc.rows if by_queries else mc.cols)(lse2, tile))
                tokens = (qt_s.at[slot], kt_s.at[wg])  # the tile's rows' and columns' (ids, positions)
                return mc.mask_tile_from_smem(p, 0.0, mask_kind, *(tokens if by_queries else tokens[::-1]),
                                              causal=causal, q_on_rows=by_queries, positions_mask=positions_mask)

            def dscores(p, dp, slot):
                delta = plgpu.load(st_s.at[slot, 1], layout=mc.ROW if by_queries else mc.COL)
                return p * (dp - (mc.rows if by_queries else mc.cols)(delta, tile))

            def publish(ds16, j, p16=None):
                """This thread's ds of step ``j`` into its SMEM buffer for thread 2 (once thread 2 is done
                with step j - 2's, which used the same buffer), and ``p16`` (if given) into ``p_s``."""
                parity = lax.rem(j, 2)

                @pl.when(j >= 2)
                def _():
                    plgpu.barrier_wait(ds_free.at[parity])

                ds_s.at[parity, wg][...] = ds16
                if p16 is not None:
                    p_s.at[wg][...] = p16
                plgpu.commit_smem()
                plgpu.barrier_arrive(ds_ready.at[parity])
                return ds_s.at[parity, wg]

            def products(slot, own):
                """``(s, dp)``'s operands: ``q k^T, dout v^T`` (queries on rows) or ``k q^T, v dout^T``;
                ``own``: this thread's index into k_s and v_s (see ``DESCRIPTORS``)."""
                k_tile = k_s.at[own]  # [keys, D] (rows) or [D, keys]
                if by_queries:
                    return (q_s.at[slot], k_tile.T if k_rows_first else k_tile), (do_s.at[slot], v_s.at[own].T)
                return (k_tile if k_rows_first else k_tile.T, q_s.at[slot].T), (v_s.at[own], do_s.at[slot].T)

            def step(j, carry):
                dk, dv = carry
                slot = lax.rem(j, stages)
                _, _, mask_kind = block_of(j)
                for bar in (q_bar, qt_bar, st_bar, do_bar):
                    plgpu.barrier_wait(bar.at[slot])
                # per step: wg plus a zero the compilers cannot see through (the list's count loaded again,
                # after the barrier waits, minus its first load), so no descriptor is loop-invariant
                own = wg + (mc.list_entry(list_s, 0) - count) if descriptors == "per_step" else wg
                s_operands, dp_operands = products(slot, own)
                if interpret is not None:  # one product at a time, 16-bit operands from SMEM
                    s, dp = mc.matmuls((*s_operands, tile), (*dp_operands, tile))
                    p = probs(s, slot, mask_kind)
                    ds16 = dscores(p, dp, slot).astype(dtype)
                    if by_queries:
                        ds_a = publish(ds16, j, p.astype(dtype)).T
                        p_a = p_s.at[own].T
                    else:
                        ds_a = publish(ds16, j)
                        p_a = mc.register_operand(p.astype(dtype), p_s.at[wg], interpret=interpret)
                    dv, dk = mc.accumulate((dv, p_a, do_s.at[slot]), (dk, ds_a, q_s.at[slot]), interpret=interpret)
                    plgpu.barrier_arrive(consumed.at[slot])
                    return dk, dv

                def run(s_acc, dp_acc, dv_acc, dk_acc):
                    dv_acc[...] = dv
                    dk_acc[...] = dk
                    plgpu.wgmma(s_acc, *s_operands)
                    dp_with_s = dp_issue == "with_s"  # else s and dp are never in flight together (DP_ISSUES)
                    if dp_with_s:
                        plgpu.wgmma(dp_acc, *dp_operands)
                    # with dp issued, it may still run while p is computed
                    p = probs(plgpu.wgmma_accumulator_load(s_acc, wait_n=int(dp_with_s)), slot, mask_kind)
                    p16 = p.astype(dtype)
                    if not dp_with_s:
                        plgpu.wgmma(dp_acc, *dp_operands)
                    dp = plgpu.wgmma_accumulator_load(dp_acc, wait_n=0)
                    ds16 = dscores(p, dp, slot).astype(dtype)
                    if by_queries:  # p and ds through SMEM, read there transposed
                        ds_a = publish(ds16, j, p16)
                        plgpu.wgmma(dv_acc, p_s.at[own].T, do_s.at[slot])
                        plgpu.wgmma(dk_acc, ds_a.T, q_s.at[slot])
                    elif ds_operand == "smem":  # ds in SMEM first, then dk reads it there
                        ds_a = publish(ds16, j)
                        plgpu.wgmma(dv_acc, p16, do_s.at[slot])
                        plgpu.wgmma(dk_acc, ds_a, q_s.at[slot])
                    else:
                        plgpu.wgmma(dv_acc, p16, do_s.at[slot])
                        plgpu.wgmma(dk_acc, ds16, q_s.at[slot])
                        publish(ds16, j)  # while dv and dk run
                    dv_new = plgpu.wgmma_accumulator_load(dv_acc, wait_n=0)
                    return dk_acc[...], dv_new

                carry = mc.with_step_accumulators(run, tile, head_dim)
                plgpu.barrier_arrive(consumed.at[slot])
                return carry

            zero = (mc.zeros((mc.ROWS, head_dim)),) * 2
            dk, dv = lax.fori_loop(0, n_steps, step, zero)

            def await_free(j, carry):  # the last two steps' ds_free too: every completion a thread waits on is awaited
                plgpu.barrier_wait(ds_free.at[lax.rem(j, 2)])
                return carry

            lax.fori_loop(jnp.maximum(n_steps - 2, 0), n_steps, await_free, None)
            # dk leaves through q's slot ``wg`` (k's tile may be transposed), once the other thread's last
            # products are done reading q too
            plgpu.barrier_arrive(loops_done.at[0])
            plgpu.barrier_wait(loops_done.at[0])
            dk_s = q_s.at[wg]
            v_s.at[wg][...] = dv.astype(dtype)
            dk_s[...] = (dk * scale).astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(dk_s, dk_ref.at[b, k_rows, hkv])
            plgpu.copy_smem_to_gmem(v_s.at[wg], dv_ref.at[b, k_rows, hkv])
            plgpu.wait_smem_to_gmem(0)

    transforms = mc.mma_transforms(dtype)
    resident = plgpu.SMEM((mc.COMPUTE, mc.ROWS, head_dim), dtype, transforms=transforms)
    keys = plgpu.SMEM((mc.COMPUTE, *((mc.ROWS, head_dim) if k_rows_first else (head_dim, mc.ROWS))), dtype,
                      transforms=transforms)
    streamed = plgpu.SMEM((stages, q_block, head_dim), dtype, transforms=transforms)
    scratch = [
        keys, resident,  # k (see K_LAYOUTS), v (then dv)
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.int32),  # key tokens
        streamed, streamed,  # q, dout
        plgpu.SMEM((stages, 2, q_block), jnp.int32),  # query tokens
        plgpu.SMEM((stages, 2, q_block), jnp.float32),  # lse2, delta
        plgpu.SMEM(lists.shape[2:], jnp.int32),  # visit list
        # p: through SMEM with queries on the rows, else only when interpreting
        plgpu.SMEM((mc.COMPUTE, *tile), dtype, transforms=transforms) if by_queries
        else mc.staging_scratch(tile, dtype, interpret=interpret),
        plgpu.SMEM((2, mc.COMPUTE, *tile), dtype, transforms=transforms),  # ds of each thread, by step parity
        # dQ staging, 128-byte swizzled (Mosaic's transform inference swizzles it even when no transforms are
        # given: JAX 0.11 lowers with warpgroup semantics)
        plgpu.SMEM((2, q_block, chunk), jnp.float32, transforms=mc.mma_transforms(jnp.float32)),
        plgpu.Barrier(num_barriers=1),  # list
        *[plgpu.Barrier(num_barriers=mc.COMPUTE)] * 3,  # k, v, key tokens
        *[plgpu.Barrier(num_barriers=stages)] * 4,  # q, dout, query tokens, stats
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=stages),  # consumed
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=2),  # ds_ready, by parity
        plgpu.Barrier(num_barriers=2),  # ds_free, by parity
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=1),  # both compute threads' loops are done
        plgpu.Barrier(num_barriers=1),  # dq_loaded (interpret mode's read-modify-writes)
    ]
    out_type = (jax.ShapeDtypeStruct(k.shape, dtype), jax.ShapeDtypeStruct(v.shape, dtype))
    run = mc.kernel(body, name="attention_dkdv_dq_thread", out_type=out_type, scratch_types=scratch,
                    grid=(batch, n_k, kv_heads), interpret=interpret)
    k_in = k if k_rows_first else jnp.transpose(k, (0, 2, 3, 1))  # [B, S, Hkv, D] or [B, Hkv, D, S]
    return run(q, k_in, v, dout, stats, q_tokens, kv_tokens, lists, dq_acc)
