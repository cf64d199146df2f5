"""The Mosaic GPU fused backward with a dQ warpgroup: dK, dV and dQ in one kernel, s and dp computed once.

Grid and visit lists as :func:`.mosaic_backward.dkdv` (one CTA per key block of 128 and kv head, the
GQA group's query heads in turn, 64-query blocks). Threads 0 and 1 own 64 keys each and run the
dK/dV loop (p computed while dp is on the tensor cores); each also puts its 16-bit ds tile
``[keys, queries]`` into SMEM, one buffer per step parity. Thread 2 streams q, dout, the query tokens
and stats as the split kernel's memory thread does, and between those copies computes each step's dQ
share over the CTA's 128 keys, ``ds^T @ k`` (the caller scales the sum), in 64-column chunks of D (one
float32 accumulator), and adds it to a float32 dQ buffer in GMEM by TMA reduce-adds. The dQ products, their
SMEM staging and the reduce-adds so stay off the compute threads' path (they only wait, two steps
later, for thread 2 to be done reading a ds buffer): the column-split kernel of runs AR-AS lost 1.1 us
per step to them.

Measured on an H200 (BENCHMARKS.md, runs BL-BQ, dp issued after p): 1.06x the split backward's fwd+bwd
at 32k causal, 1.02-1.04x at 8k; the ``mosaic`` backend's default from 8,192 keys on. Registers bound it (see
``REGISTERS``; runs BD-BF: 1.96 us per CTA step at 32k if the compute threads were not serialized, 2.74
as they are). dQ's float32 sums come in a different order each run (not bit-reproducible; the split
backward is).

k stays in SMEM as it is in GMEM, ``[keys, D]``: the compute threads read it as the K-major ``a`` of
``s^T = k q^T``, and a dQ product reads a 64-column slice of it (one swizzle tile wide) as an N-major
``b``. Before the eighteenth session k was transposed by XLA first; without that the 32k causal step held
at the H100's power cap gained 0.3-0.4% (BENCHMARKS.md, runs CN-CO). The kernel's other measured forms
(32-column chunks, ds read from SMEM by dk, FlashAttention-3's tile layout with queries on the rows,
hoisted descriptors, dQ scaled by thread 2, dp issued with s, k transposed) lost and were removed in the
eighteenth session; their rows are in kernels/NOTES.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import mosaic_common as mc
from .mosaic_backward import query_blocks

# columns of D per dQ product: a [64, 64] float32 accumulator, 32 registers a thread; k's 128-byte swizzle
# tile is 64 columns wide, so a chunk is one tile column of it
DQ_CHUNK = 64
# registers per thread (compute threads, thread 2): 2 x compute + thread 2 at most 504 (168 x 3 threads).
# A region needs more registers than 24 + the wgmma accumulators ptxas keeps at once (it places them from
# R24 up). The compute threads issue dp's product only after p is computed, so s and dp are never in flight
# together and 216 (or 208) assemble without serializing the kernel's wgmmas (C7512, which s and dp together
# caused below 224); thread 2 needs 64 for its 64-column chunks. 208/88 measured level with 216/72 (runs BI,
# BO, BP: +0.9%, +1.0%, -0.3% at 32k causal).
REGISTERS = (216, 72)
# Diagnostics for the bench (dQ is then wrong): "no_add" skips thread 2's reduce-adds, "no_dq" all of
# its dQ work (it only hands the ds buffers back).
PROBES = ("none", "no_add", "no_dq")
# SMEM slots for q/dout, exactly (dk leaves through slots 0 and 1): with ds by parity (32 KiB) and the dQ
# staging (32 KiB) beside k, v and two slots the CTA holds about 197 KiB of the 227 KiB it may have (213
# with queries on the rows, whose p tiles take 16 more); a third slot does not fit at D = 128.
STAGES = 2


def supports(head_dim: int, q_block: int, stages: int) -> bool:
    """Whether :func:`dkdv_dq` runs this tuning: 64-query blocks (one wgmma M for dQ), D of 64 or 128,
    ``STAGES`` slots (dk leaves through q's, one per compute thread)."""
    return q_block == mc.ROWS and head_dim in (64, 128) and stages == STAGES


def dkdv_dq(q, k, v, dout, stats, q_tokens, kv_tokens, lists, dq_acc, *, causal: bool, scale: float,
            tuning: mc.Tuning, registers: tuple[int, int] = REGISTERS, probe: str = "none",
            positions_mask: bool = True, interpret=None):
    """Padded inputs (as :func:`.mosaic_backward.dkdv`) -> ``(dk, dv)`` like k, v; adds ``ds^T @ k``, dQ
    without its softmax scale, to ``dq_acc`` (a zeroed float32 ``jax.Ref`` like q). ``lists``: per key block,
    the visited 64-query blocks. ``registers``: see ``REGISTERS``; ``probe``: see ``PROBES``."""
    q_block, stages = tuning
    batch, _, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = q_heads // kv_heads
    n_k = k.shape[1] // mc.BLOCK
    dtype = q.dtype
    scale2 = scale * mc.LOG2E
    tile = (mc.ROWS, q_block)  # keys x queries
    if not supports(head_dim, q_block, stages):
        raise ValueError(f"the fused dK/dV/dQ kernel needs 64-query blocks, D of 64 or 128 and "
                         f"{STAGES} slots, got block={q_block}, D={head_dim}, stages={stages}")
    if probe not in PROBES:
        raise ValueError(f"the fused dK/dV/dQ kernel: probe must be one of {PROBES}, got {probe!r}")
    compute_regs, dq_regs = registers
    if 2 * compute_regs + dq_regs > 504 or min(registers) < 24 or any(n % 8 for n in registers):
        raise ValueError(f"the fused dK/dV/dQ kernel: registers (compute, thread 2) must be multiples of 8, "
                         f"at least 24, with 2 x compute + thread 2 <= 504, got {registers}")
    chunk = min(DQ_CHUNK, head_dim)
    n_chunks = head_dim // chunk

    def body(q_ref, k_ref, v_ref, do_ref, st_ref, qt_ref, kt_ref, list_ref, dq_ref, dk_ref, dv_ref,
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
            """Step ``j``'s dQ share, ``ds^T k`` over both threads' keys, added to ``dq_ref``."""
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
                # ds^T [queries, keys] times k's [keys, chunk], summed over both compute threads' keys
                pairs = [(ds_s.at[parity, t].T, k_s.at[t, :, cols]) for t in range(mc.COMPUTE)]
                part = mc.chain((q_block, chunk), pairs, interpret=interpret)

                @pl.when(c == n_chunks - 1)  # every product that reads this parity's ds is done
                def _():
                    plgpu.barrier_arrive(ds_free.at[parity])

                target = dq_ref.at[b, pl.ds(qb * q_block, q_block), h, cols]
                staging = dq_s.at[lax.rem(j * n_chunks + c, 2)]  # the two buffers alternate
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
            mc.copy_in([(k_ref.at[b, k_rows, hkv], k_s.at[wg], k_bar.at[wg]),
                        (v_ref.at[b, k_rows, hkv], v_s.at[wg], v_bar.at[wg]),
                        (kt_ref.at[b, :, k_rows], kt_s.at[wg], kt_bar.at[wg])])

            def probs(s, slot, mask_kind):
                """``exp2(s * scale2 - lse2)``, masked; lse2 per column (query)."""
                lse2 = plgpu.load(st_s.at[slot, 0], layout=mc.COL)
                p = jnp.exp2(s * scale2 - mc.cols(lse2, tile))
                # the tile's rows' (keys') and columns' (queries') ids and positions
                return mc.mask_tile_from_smem(p, 0.0, mask_kind, kt_s.at[wg], qt_s.at[slot], causal=causal,
                                              q_on_rows=False, positions_mask=positions_mask)

            def dscores(p, dp, slot):
                delta = plgpu.load(st_s.at[slot, 1], layout=mc.COL)
                return p * (dp - mc.cols(delta, tile))

            def publish(ds16, j):
                """This thread's ds of step ``j`` into its SMEM buffer for thread 2 (once thread 2 is done
                with step j - 2's, which used the same buffer)."""
                parity = lax.rem(j, 2)

                @pl.when(j >= 2)
                def _():
                    plgpu.barrier_wait(ds_free.at[parity])

                ds_s.at[parity, wg][...] = ds16
                plgpu.commit_smem()
                plgpu.barrier_arrive(ds_ready.at[parity])
                return ds_s.at[parity, wg]

            def step(j, carry):
                dk, dv = carry
                slot = lax.rem(j, stages)
                _, _, mask_kind = block_of(j)
                for bar in (q_bar, qt_bar, st_bar, do_bar):
                    plgpu.barrier_wait(bar.at[slot])
                # this thread's index into k_s and v_s, plus a zero the compilers cannot see through (the
                # list's count loaded again, after the barrier waits, minus its first load), so that the
                # operands' descriptors are recomputed each step instead of kept live across the loop (runs
                # BD-BE: 64-104 B of spills when hoisted)
                own = wg + (mc.list_entry(list_s, 0) - count)
                # s^T = k q^T and dp^T = v dout^T
                s_operands, dp_operands = (k_s.at[own], q_s.at[slot].T), (v_s.at[own], do_s.at[slot].T)
                if interpret is not None:  # one product at a time, 16-bit operands from SMEM
                    s, dp = mc.matmuls((*s_operands, tile), (*dp_operands, tile))
                    p = probs(s, slot, mask_kind)
                    ds16 = dscores(p, dp, slot).astype(dtype)
                    ds_a = publish(ds16, j)
                    p_a = mc.register_operand(p.astype(dtype), p_s.at[wg], interpret=interpret)
                    dv, dk = mc.accumulate((dv, p_a, do_s.at[slot]), (dk, ds_a, q_s.at[slot]), interpret=interpret)
                    plgpu.barrier_arrive(consumed.at[slot])
                    return dk, dv

                def run(s_acc, dp_acc, dv_acc, dk_acc):
                    dv_acc[...] = dv
                    dk_acc[...] = dk
                    plgpu.wgmma(s_acc, *s_operands)
                    p = probs(plgpu.wgmma_accumulator_load(s_acc, wait_n=0), slot, mask_kind)
                    p16 = p.astype(dtype)
                    # dp only now, so that s and dp are never in flight together (see REGISTERS)
                    plgpu.wgmma(dp_acc, *dp_operands)
                    dp = plgpu.wgmma_accumulator_load(dp_acc, wait_n=0)
                    ds16 = dscores(p, dp, slot).astype(dtype)
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
            # dk leaves through q's slot ``wg``, once the other thread's last products are done reading q too
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
    streamed = plgpu.SMEM((stages, q_block, head_dim), dtype, transforms=transforms)
    scratch = [
        resident, resident,  # k, v (then dv)
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.int32),  # key tokens
        streamed, streamed,  # q, dout
        plgpu.SMEM((stages, 2, q_block), jnp.int32),  # query tokens
        plgpu.SMEM((stages, 2, q_block), jnp.float32),  # lse2, delta
        plgpu.SMEM(lists.shape[2:], jnp.int32),  # visit list
        mc.staging_scratch(tile, dtype, interpret=interpret),  # p: through SMEM only when interpreting
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
    return run(q, k, v, dout, stats, q_tokens, kv_tokens, lists, dq_acc)
