"""The Mosaic GPU backward kernels of the split backward: dK/dV per key block, dQ per query block (no
atomics). (dQ added from inside a dK/dV kernel by its memory thread: :mod:`.mosaic_fused`.)

Both recompute ``p = exp2(s * scale * log2 e - lse * log2 e)`` from the given
(possibly ring-merged) lse, so they serve ``flash_attention_bwd`` as well as the
custom VJP. ``stats`` is float32 ``[B, Hq, 2, Sq]``: row 0 the lse in base 2
(+inf on empty rows, so their p is 0), row 1 ``delta = rowsum(dout * out) - dlse``
(0 on empty rows).

* dK/dV, grid ``(B, n_k_blocks, Hkv)``: threads 0/1 own 64 key rows each and
  work on transposed tiles (keys x queries) so every operand is in the layout
  wgmma wants; thread 2 streams q, dout, the query tokens and stats of every
  visited query block, for each query head of the GQA group in turn (the group's
  dK/dV sum stays in registers). The grid's ``r`` names a visit list, not a block:
  lists come longest first (:mod:`.mosaic_plan`).
* dQ, work items ``(b, r, h)`` like the forward's (:mod:`.mosaic_schedule`), one CTA
  each: threads 0/1 own 64 query rows each; thread 2 streams k, v and the key tokens
  of every visited key block.

Both loops wait for s alone and compute p while dp is still on the tensor cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import mosaic_common as mc
from . import mosaic_schedule as sched


def query_blocks(b, hkv, group, count, q_block, list_s, gmem, smem, bars):
    """``(block_of, issue)`` for a dK/dV kernel's streamed query blocks: the visited blocks of ``list_s``
    (``count`` of them) for each query head of kv head ``hkv``'s GQA group in turn. ``block_of(j)``:
    the j-th one's ``(query head, query block, mask_kind)``; ``issue(j, slot)``: its q, query tokens,
    stats and dout into ``slot``. ``gmem``/``smem``/``bars``: those four each."""
    q_ref, qt_ref, st_ref, do_ref = gmem

    def block_of(j):
        g, e = j // jnp.maximum(count, 1), lax.rem(j, jnp.maximum(count, 1))
        return (hkv * group + g, *mc.visited(list_s, e))

    def issue(j, slot):
        h, qb, _ = block_of(j)
        q_rows = pl.ds(qb * q_block, q_block)
        sources = (q_ref.at[b, q_rows, h], qt_ref.at[b, :, q_rows], st_ref.at[b, h, :, q_rows], do_ref.at[b, q_rows, h])
        for source, dst, bar in zip(sources, smem, bars):
            plgpu.copy_gmem_to_smem(source, dst.at[slot], bar.at[slot])

    return block_of, issue


def dkdv(q, k, v, dout, stats, q_tokens, kv_tokens, lists, *, causal: bool, scale: float, tuning: mc.Tuning,
         positions_mask: bool = True, interpret=None):
    """Padded inputs -> ``(dk, dv)`` like k, v. ``lists``: per key block (``BLOCK``), the visited
    query blocks (``tuning.block``).

    Each step issues ``s = k q^T`` and ``dp = v dout^T`` together, computes p while dp still runs,
    then issues ``dv += p dout`` and ``dk += ds q`` (interpret mode waits for each product in turn).
    (A pipelined loop carrying p and ds into the next step, dv's product issued before ds, and waiting
    for s and dp together were measured slower and removed: kernels/NOTES.md, runs AA-AB and AN; so
    was the compute threads adding their own dQ shares, runs F-J: :mod:`.mosaic_fused` does it in the
    memory thread.)
    """
    q_block, stages = tuning
    batch, q_len, q_heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    n_k = kv_len // mc.BLOCK
    dtype = q.dtype
    scale2 = scale * mc.LOG2E
    tile = (mc.ROWS, q_block)  # keys x queries

    def body(q_ref, k_ref, v_ref, do_ref, st_ref, qt_ref, kt_ref, list_ref, dk_ref, dv_ref, k_s, v_s, kt_s, q_s,
             do_s, qt_s, st_s, list_s, p_s, ds_s, list_bar, k_bar, v_bar, kt_bar, q_bar, do_bar, qt_bar, st_bar,
             consumed):
        b, r, hkv = mc.program_ids()
        wg = mc.thread_index()
        count, kb = mc.visit_list(list_ref.at[b, r], list_s, list_bar, wg)

        block_of, issue = query_blocks(b, hkv, group, count, q_block, list_s, (q_ref, qt_ref, st_ref, do_ref),
                                       (q_s, qt_s, st_s, do_s), (q_bar, qt_bar, st_bar, do_bar))

        mc.memory_thread(wg, group * count, issue, consumed, stages)

        @pl.when(wg < mc.MEMORY)
        def _():
            mc.registers(compute=True)
            k_rows = pl.ds(kb * mc.BLOCK + wg * mc.ROWS, mc.ROWS)
            mc.copy_in([(k_ref.at[b, k_rows, hkv], k_s.at[wg], k_bar.at[wg]),
                        (v_ref.at[b, k_rows, hkv], v_s.at[wg], v_bar.at[wg]),
                        (kt_ref.at[b, :, k_rows], kt_s.at[wg], kt_bar.at[wg])])
            kv_seg = plgpu.load(kt_s.at[wg, 0], layout=mc.ROW)
            kv_pos = plgpu.load(kt_s.at[wg, 1], layout=mc.ROW)

            def step(j, carry):
                dk, dv = carry
                slot = lax.rem(j, stages)
                _, _, mask_kind = block_of(j)
                plgpu.barrier_wait(q_bar.at[slot])
                plgpu.barrier_wait(qt_bar.at[slot])
                plgpu.barrier_wait(st_bar.at[slot])
                lse2 = plgpu.load(st_s.at[slot, 0], layout=mc.COL)
                plgpu.barrier_wait(do_bar.at[slot])
                s, dp = mc.matmuls((k_s.at[wg], q_s.at[slot].T, tile), (v_s.at[wg], do_s.at[slot].T, tile))
                p = jnp.exp2(s * scale2 - mc.cols(lse2, tile))
                p = mc.mask_tile(p, 0.0, mask_kind, qt_s.at[slot], kv_seg, kv_pos, causal=causal, q_on_rows=False,
                                 positions_mask=positions_mask)
                p16 = mc.register_operand(p.astype(dtype), p_s.at[wg], interpret=interpret)
                delta = plgpu.load(st_s.at[slot, 1], layout=mc.COL)
                ds16 = (p * (dp - mc.cols(delta, tile))).astype(dtype)
                ds16 = mc.register_operand(ds16, ds_s.at[wg], interpret=interpret)
                dv, dk = mc.accumulate((dv, p16, do_s.at[slot]), (dk, ds16, q_s.at[slot]), interpret=interpret)
                plgpu.barrier_arrive(consumed.at[slot])
                return dk, dv

            def wait_inputs(slot):
                for bar in (q_bar, qt_bar, st_bar, do_bar):
                    plgpu.barrier_wait(bar.at[slot])

            def probs(s, j):
                """float32 p of step ``j`` from its ``s = k q^T`` (masked)."""
                slot = lax.rem(j, stages)
                _, _, mask_kind = block_of(j)
                p = jnp.exp2(s * scale2 - mc.cols(plgpu.load(st_s.at[slot, 0], layout=mc.COL), tile))
                return mc.mask_tile(p, 0.0, mask_kind, qt_s.at[slot], kv_seg, kv_pos, causal=causal,
                                    q_on_rows=False, positions_mask=positions_mask)

            def dscores(p, dp, j):
                """float32 ds of step ``j`` from its p and ``dp = v dout^T``."""
                return p * (dp - mc.cols(plgpu.load(st_s.at[lax.rem(j, stages), 1], layout=mc.COL), tile))

            def overlap_step(j, carry):
                """Step ``j`` on a GPU: p computed while dp runs."""
                dk, dv = carry
                slot = lax.rem(j, stages)
                wait_inputs(slot)

                def run(s_acc, dp_acc, dv_acc, dk_acc):
                    dv_acc[...] = dv
                    dk_acc[...] = dk
                    plgpu.wgmma(s_acc, k_s.at[wg], q_s.at[slot].T)
                    plgpu.wgmma(dp_acc, v_s.at[wg], do_s.at[slot].T)
                    p = probs(plgpu.wgmma_accumulator_load(s_acc, wait_n=1), j)  # dp may still run
                    dp = plgpu.wgmma_accumulator_load(dp_acc, wait_n=0)
                    p16, ds16 = p.astype(dtype), dscores(p, dp, j).astype(dtype)
                    plgpu.wgmma(dv_acc, p16, do_s.at[slot])
                    plgpu.wgmma(dk_acc, ds16, q_s.at[slot])
                    dv_new = plgpu.wgmma_accumulator_load(dv_acc, wait_n=0)
                    return dk_acc[...], dv_new

                carry = mc.with_step_accumulators(run, tile, head_dim)
                plgpu.barrier_arrive(consumed.at[slot])
                return carry

            zero = (mc.zeros((mc.ROWS, head_dim)),) * 2
            n_steps = group * count
            dk, dv = lax.fori_loop(0, n_steps, step if interpret is not None else overlap_step, zero)

            v_s.at[wg][...] = dv.astype(dtype)
            k_s.at[wg][...] = (dk * scale).astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(k_s.at[wg], dk_ref.at[b, k_rows, hkv])
            plgpu.copy_smem_to_gmem(v_s.at[wg], dv_ref.at[b, k_rows, hkv])
            plgpu.wait_smem_to_gmem(0)

    transforms = mc.mma_transforms(dtype)
    resident = plgpu.SMEM((mc.COMPUTE, mc.ROWS, head_dim), dtype, transforms=transforms)
    streamed = plgpu.SMEM((stages, q_block, head_dim), dtype, transforms=transforms)
    scratch = [
        resident, resident,  # k, v (then dk, dv)
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.int32),  # key tokens
        streamed, streamed,  # q, dout
        plgpu.SMEM((stages, 2, q_block), jnp.int32),  # query tokens
        plgpu.SMEM((stages, 2, q_block), jnp.float32),  # lse2, delta
        plgpu.SMEM(lists.shape[2:], jnp.int32),  # visit list
        mc.staging_scratch(tile, dtype, interpret=interpret),  # p (interpret mode only)
        mc.staging_scratch(tile, dtype, interpret=interpret),  # ds (interpret mode only)
        plgpu.Barrier(num_barriers=1),
        *[plgpu.Barrier(num_barriers=mc.COMPUTE)] * 3,
        *[plgpu.Barrier(num_barriers=stages)] * 4,
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=stages),
    ]
    out_type = (jax.ShapeDtypeStruct(k.shape, dtype), jax.ShapeDtypeStruct(v.shape, dtype))
    run = mc.kernel(body, name="attention_dkdv", out_type=out_type, scratch_types=scratch,
                    grid=(batch, n_k, kv_heads), interpret=interpret)
    return run(q, k, v, dout, stats, q_tokens, kv_tokens, lists)


# (The dQ kernel's switches, its store from registers, its persistent grid and prefetch of the next item, its
# in-kernel delta and serial loop, were measured and removed in the eighteenth session: kernels/NOTES.md.)


def dq(q, k, v, dout, stats, q_tokens, kv_tokens, lists, *, causal: bool, scale: float, tuning: mc.Tuning,
       positions_mask: bool = True, item_order: str = "auto", interpret=None):
    """Padded inputs -> dq like q. ``lists``: per query block (``BLOCK``), the visited key blocks
    (``tuning.block``). One CTA per query block and head (the work items of :mod:`.mosaic_schedule`, one
    per CTA; ``item_order``: their order, ``mosaic_schedule.ITEM_ORDERS``). Each step issues ``s = q k^T``
    and ``dp = dout v^T`` and computes p while dp still runs (interpret mode waits for both at once); dq
    leaves through dout's SMEM buffer, in one TMA store. (The item loop and next-item fetches of its
    persistent form, measured and removed in the eighteenth session, went in the nineteenth.)"""
    kv_block, stages = tuning
    batch, q_len, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = q_heads // kv_heads
    n_q = q_len // mc.BLOCK
    dtype = q.dtype
    scale2 = scale * mc.LOG2E
    tile = (mc.ROWS, kv_block)  # queries x keys
    work, list_slots = sched.plan_work((batch, n_q, q_heads), None, lists.shape, order=item_order)

    def body(q_ref, k_ref, v_ref, do_ref, st_ref, qt_ref, kt_ref, list_ref, dq_ref, q_s, do_s, qt_s, st_s, k_s, v_s,
             kt_s, list_s, ds_s, list_bar, list_free, q_bar, do_bar, qt_bar, st_bar, k_bar, v_bar, kt_bar, consumed):
        w = lax.axis_index("w")
        wg = mc.thread_index()
        copies = mc.key_block_issuers(kv_block, (k_ref, kt_ref, v_ref), (k_s, kt_s, v_s), (k_bar, kt_bar, v_bar),
                                      group)
        sched.memory_thread(wg, work, w, list_ref, list_s, list_bar, list_free, copies, consumed, stages)

        @pl.when(wg < mc.MEMORY)
        def _():
            mc.registers(compute=True)
            sched.fetch_item(work, w, list_s, list_bar, 0, wg, lambda b, h, rows: [
                (q_ref.at[b, rows, h], q_s.at[wg], q_bar.at[wg]),
                (qt_ref.at[b, :, rows], qt_s.at[wg], qt_bar.at[wg]),
                (st_ref.at[b, h, :, rows], st_s.at[wg], st_bar.at[wg]),
                (do_ref.at[b, rows, h], do_s.at[wg], do_bar.at[wg])])
            b, h, q_rows = sched.item_rows(work, w, list_s, 0, wg)  # (the list has arrived)
            list_i = list_s.at[work.list_slot(0)]
            count = mc.list_entry(list_i, 0)
            for bar in (q_bar, qt_bar, st_bar, do_bar):
                plgpu.barrier_wait(bar.at[wg])
            q_seg = plgpu.load(qt_s.at[wg, 0], layout=mc.ROW)
            q_pos = plgpu.load(qt_s.at[wg, 1], layout=mc.ROW)
            lse2 = plgpu.load(st_s.at[wg, 0], layout=mc.ROW)
            delta = plgpu.load(st_s.at[wg, 1], layout=mc.ROW)

            def step_(j, acc):
                slot = lax.rem(j, stages)
                _, mask_kind = mc.visited(list_i, j)
                plgpu.barrier_wait(k_bar.at[slot])
                plgpu.barrier_wait(kt_bar.at[slot])
                plgpu.barrier_wait(v_bar.at[slot])

                def probs(s):
                    p = jnp.exp2(s * scale2 - mc.rows(lse2, tile))
                    return mc.mask_tile(p, 0.0, mask_kind, kt_s.at[slot], q_seg, q_pos, causal=causal,
                                        q_on_rows=True, positions_mask=positions_mask)

                if interpret is None:
                    def overlapped(s_acc, dp_acc):
                        plgpu.wgmma(s_acc, q_s.at[wg], k_s.at[slot].T)
                        plgpu.wgmma(dp_acc, do_s.at[wg], v_s.at[slot].T)
                        p = probs(plgpu.wgmma_accumulator_load(s_acc, wait_n=1))  # dp may still run
                        return p, plgpu.wgmma_accumulator_load(dp_acc, wait_n=0)

                    p, dp = pl.run_scoped(overlapped, plgpu.ACC(tile, jnp.float32), plgpu.ACC(tile, jnp.float32))
                else:
                    s, dp = mc.matmuls((q_s.at[wg], k_s.at[slot].T, tile),
                                       (do_s.at[wg], v_s.at[slot].T, tile))
                    p = probs(s)
                ds = p * (dp - mc.rows(delta, tile))
                ds16 = mc.register_operand(ds.astype(dtype), ds_s.at[wg], interpret=interpret)
                acc = mc.matmul(ds16, k_s.at[slot], acc.shape, init=acc, interpret=interpret)
                plgpu.barrier_arrive(consumed.at[slot])
                return acc

            acc = lax.fori_loop(0, count, step_, mc.zeros((mc.ROWS, head_dim)))
            plgpu.barrier_arrive(list_free.at[work.list_slot(0)])
            do_s.at[wg][...] = (acc * scale).astype(dtype)  # dq leaves through dout's buffer
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(do_s.at[wg], dq_ref.at[b, q_rows, h])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    transforms = mc.mma_transforms(dtype)
    resident = plgpu.SMEM((mc.COMPUTE, mc.ROWS, head_dim), dtype, transforms=transforms)
    streamed = plgpu.SMEM((stages, kv_block, head_dim), dtype, transforms=transforms)
    scratch = [
        resident, resident,  # q, dout (then dq)
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.int32),  # query tokens
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.float32),  # lse2, delta
        streamed, streamed,  # k, v
        plgpu.SMEM((stages, 2, kv_block), jnp.int32),  # key tokens
        plgpu.SMEM((list_slots, *lists.shape[2:]), jnp.int32),  # visit lists
        mc.staging_scratch(tile, dtype, interpret=interpret),  # ds (interpret mode only)
        plgpu.Barrier(num_barriers=list_slots),  # list arrived
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=list_slots),  # list released
        *[plgpu.Barrier(num_barriers=mc.COMPUTE)] * 4,
        *[plgpu.Barrier(num_barriers=stages)] * 3,
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=stages),
    ]
    run = mc.kernel(body, name="attention_dq", out_type=jax.ShapeDtypeStruct(q.shape, dtype), scratch_types=scratch,
                    grid=(work.workers,), grid_names=("w",), interpret=interpret)
    return run(q, k, v, dout, stats, q_tokens, kv_tokens, lists)
