"""The Mosaic GPU forward kernel: out and lse of 128-row query blocks.

Work items ``(b, r, h)``, heads fastest so the query heads of one GQA group
run side by side and share their K/V blocks in L2; query blocks run in the
order of their visit lists, longest first (:mod:`.mosaic_plan`; batch rows one
after another or side by side: :mod:`.mosaic_schedule`). One CTA per
item, or a persistent grid of ``workers`` CTAs (:mod:`.mosaic_schedule`): q is
loaded into registers as an item starts and the next item's query rows are
fetched at once. Threads 0/1 each own 64 query rows; thread 2 streams the key
blocks of the visit lists. Per key block: ``s = q k^T`` (wgmma, float32), the mask
only on tiles that need it, online softmax in base 2 (mask and row max on the raw
scores, the scale folded into ``exp2``'s multiply-add), ``acc += p v`` with p from
registers. The loop is pipelined: ``s_j`` and ``acc += p_{j-1} v_{j-1}`` are
issued together and the softmax of ``s_j`` runs while the second product is on
the tensor cores. (The serial loop, FlashAttention-3's warpgroup ping-pong, q read
from SMEM and the scale applied to the scores were measured slower and removed:
kernels/NOTES.md.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import mosaic_common as mc
from . import mosaic_rescale
from . import mosaic_schedule as sched


def forward(q, k, v, q_tokens, kv_tokens, lists, *, causal: bool, scale: float, tuning: mc.Tuning,
            workers: int | None = None, positions_mask: bool = True, item_order: str = "auto", rescale: str = "lazy",
            interpret=None):
    """Padded inputs -> ``(out [B, Sq, Hq, D], lse float32 [B, Hq, Sq])``.

    q ``[B, Sq, Hq, D]``, k/v ``[B, Sk, Hkv, D]`` with Sq, Sk multiples of ``BLOCK`` and D a
    multiple of 64; token arrays int32 ``[B, 2, S]`` and visit lists from :mod:`.mosaic_plan`
    (per query block of ``BLOCK``, the visited key blocks of ``tuning.block``).

    ``workers``: CTAs of a persistent grid (None: one CTA per query block and head); ``item_order``:
    the order its items are taken in (``mosaic_schedule.ITEM_ORDERS``). A scale <= 0 is applied to the
    scores before the row max (folding it into the exponent needs the order a positive scale keeps).
    ``rescale``: ``lazy`` (a row keeps its max until a tile's scores pass it by more than
    ``mosaic_rescale.GROWTH``, and warps whose rows all kept theirs skip the accumulator's rescale) or
    ``always`` (the max follows every tile and the accumulator is rescaled each step).
    """
    fold_scale = scale > 0
    if rescale not in mosaic_rescale.RESCALES:
        raise ValueError(f"mosaic forward: rescale must be one of {mosaic_rescale.RESCALES}, got {rescale!r}")
    lazy = rescale == "lazy"
    kv_block, stages = tuning
    batch, q_len, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = q_heads // kv_heads
    n_q = q_len // mc.BLOCK
    dtype = q.dtype
    scale2 = scale * mc.LOG2E  # scores in base 2
    tile = (mc.ROWS, kv_block)
    # the next item's q is fetched as the current item starts, so its list must have arrived by then
    work, list_slots = sched.plan_work((batch, n_q, q_heads), workers, lists.shape, lookahead=True, order=item_order)

    def body(q_ref, k_ref, v_ref, qt_ref, kt_ref, list_ref, out_ref, lse_ref,
             q_s, o_s, k_s, v_s, qt_s, kt_s, lse_s, list_s, p_s, q_stage,
             list_bar, list_free, q_bar, qt_bar, k_bar, v_bar, kt_bar, consumed, v_consumed):
        w = lax.axis_index("w")
        wg = mc.thread_index()
        # k (+ key tokens) and v are released separately (v_{j-1} is read while k_j is in use)
        copies = mc.key_block_issuers(kv_block, (k_ref, kt_ref, v_ref), (k_s, kt_s, v_s), (k_bar, kt_bar, v_bar),
                                      group, separate_v=True)
        sched.memory_thread(wg, work, w, list_ref, list_s, list_bar, list_free, copies, consumed, stages,
                            v_consumed=v_consumed)

        @pl.when(wg < mc.MEMORY)
        def _():
            mc.registers(compute=True)
            n_items = work.count(w)

            def query_rows(i):
                return sched.item_rows(work, w, list_s, i, wg)

            def fetch_queries(i):  # item i's query rows and their tokens
                sched.fetch_item(work, w, list_s, list_bar, i, wg, lambda b, h, rows: [
                    (q_ref.at[b, rows, h], q_s.at[wg], q_bar.at[wg]),
                    (qt_ref.at[b, :, rows], qt_s.at[wg], qt_bar.at[wg])])

            @pl.when(n_items > 0)
            def _():
                fetch_queries(0)

            def item(i, step):
                """Item ``i``; its streamed blocks occupy slots from ``step`` on (counted across items)."""
                list_i = list_s.at[work.list_slot(i)]
                count = mc.list_entry(list_i, 0)
                b, h, q_rows = query_rows(i)
                plgpu.barrier_wait(q_bar.at[wg])
                plgpu.barrier_wait(qt_bar.at[wg])
                q_seg = plgpu.load(qt_s.at[wg, 0], layout=mc.ROW)
                q_pos = plgpu.load(qt_s.at[wg, 1], layout=mc.ROW)

                # q's rows in the wgmma register layout (staged through SMEM when interpreting); once every
                # thread's loads are done (commit_smem's barrier) q_s takes the next item's rows
                q_a = mc.register_operand(plgpu.load(q_s.at[wg], layout=plgpu.Layout.WGMMA),
                                          q_stage.at[wg], interpret=interpret)
                plgpu.commit_smem()

                @pl.when(i + 1 < n_items)
                def _():
                    fetch_queries(i + 1)

                def slot_of(j):
                    return lax.rem(step + j, stages)

                def wait_keys(j):
                    plgpu.barrier_wait(k_bar.at[slot_of(j)])
                    plgpu.barrier_wait(kt_bar.at[slot_of(j)])

                def softmax(s, m, l, j):
                    """Scores ``s`` of step ``j`` -> ``(p, m, l, alpha)``: the online softmax in base 2."""
                    _, mask_kind = mc.visited(list_i, j)
                    if fold_scale:  # mask and row max on the raw scores; the scale rides in exp2's FMA
                        s = mc.mask_tile(s, -jnp.inf, mask_kind, kt_s.at[slot_of(j)], q_seg, q_pos,
                                         causal=causal, q_on_rows=True, positions_mask=positions_mask)
                        m_new = jnp.maximum(m, jnp.max(s, axis=1) * scale2)
                    else:
                        s = mc.mask_tile(s * scale2, -jnp.inf, mask_kind, kt_s.at[slot_of(j)], q_seg, q_pos,
                                         causal=causal, q_on_rows=True, positions_mask=positions_mask)
                        m_new = jnp.maximum(m, jnp.max(s, axis=1))
                    if lazy:
                        m_new, grown = mosaic_rescale.lazy_max(m, m_new)
                    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # empty so far: keep exp2 finite
                    alpha = jnp.exp2(m - m_use)
                    if lazy:  # exactly 1 where the max stayed (also on rows with nothing visible yet)
                        alpha = jnp.where(grown, alpha, 1.0)
                    p = jnp.exp2((s * scale2 if fold_scale else s) - mc.rows(m_use, tile))
                    return p, m_new, l * alpha + jnp.sum(p, axis=1), alpha

                m0 = plgpu.layout_cast(jnp.full((mc.ROWS,), -jnp.inf, jnp.float32), mc.ROW)
                l0 = plgpu.layout_cast(jnp.zeros((mc.ROWS,), jnp.float32), mc.ROW)
                acc0 = mc.zeros((mc.ROWS, head_dim))

                def rescaled(acc, alpha):
                    return mosaic_rescale.rescale(acc, alpha, lazy=lazy, interpret=interpret)

                def scores(j):
                    return mc.matmul(q_a, k_s.at[slot_of(j)].T, tile)

                def add_pv(acc, p16, j):
                    """``acc + p16 @ v_j``, then v_j's slot is released."""
                    slot = slot_of(j)
                    plgpu.barrier_wait(v_bar.at[slot])
                    p16 = mc.register_operand(p16, p_s.at[wg], interpret=interpret)
                    acc = mc.matmul(p16, v_s.at[slot], acc.shape, init=acc, interpret=interpret)
                    plgpu.barrier_arrive(v_consumed.at[slot])
                    return acc

                def pipelined_step(j, carry):
                    """Step ``j >= 1``: s_j and acc + p_{j-1} v_{j-1} together; acc rescaled to m_j."""
                    m, l, p_prev, acc = carry
                    k_slot, v_slot = slot_of(j), slot_of(j - 1)
                    wait_keys(j)
                    if interpret is not None:  # no asynchronous wgmma: the same math, one product at a time
                        acc = add_pv(acc, p_prev, j - 1)
                        s = scores(j)
                        p, m, l, alpha = softmax(s, m, l, j)
                        plgpu.barrier_arrive(consumed.at[k_slot])
                        return m, l, p.astype(dtype), rescaled(acc, alpha)
                    plgpu.barrier_wait(v_bar.at[v_slot])

                    def overlapped(s_acc, o_acc):
                        o_acc[...] = acc
                        plgpu.wgmma(s_acc, q_a, k_s.at[k_slot].T)
                        plgpu.wgmma(o_acc, p_prev, v_s.at[v_slot])
                        s = plgpu.wgmma_accumulator_load(s_acc, wait_n=1)  # s_j done, p v may still run
                        p, m_new, l_new, alpha = softmax(s, m, l, j)
                        # p_j in 16 bits only once p v is done (the barrier ties p to the waited-for o):
                        # registers defined while a wgmma that reads register operands is in flight
                        # make ptxas serialize every wgmma of the kernel (C7513)
                        o, p = lax.optimization_barrier((o_acc[...], p))
                        return m_new, l_new, p.astype(dtype), rescaled(o, alpha)

                    carry = pl.run_scoped(overlapped, plgpu.ACC(tile, jnp.float32),
                                          plgpu.ACC(acc.shape, jnp.float32))
                    plgpu.barrier_arrive(consumed.at[k_slot])
                    plgpu.barrier_arrive(v_consumed.at[v_slot])
                    return carry

                def first(_):
                    wait_keys(0)
                    p, m, l, _ = softmax(scores(0), m0, l0, 0)
                    plgpu.barrier_arrive(consumed.at[slot_of(0)])
                    return m, l, p.astype(dtype)

                def nothing(_):
                    return m0, l0, plgpu.layout_cast(jnp.zeros(tile, dtype), plgpu.Layout.WGMMA)

                m, l, p = lax.cond(count > 0, first, nothing, None)
                m, l, p, acc = lax.fori_loop(1, count, pipelined_step, (m, l, p, acc0))
                acc = lax.cond(count > 0, lambda acc: add_pv(acc, p, count - 1), lambda acc: acc, acc)
                plgpu.barrier_arrive(list_free.at[work.list_slot(i)])
                empty = l == 0.0
                l_safe = jnp.where(empty, 1.0, l)
                # 1 / l once per row, then a multiply per element: dividing the tile itself costs 64 IEEE
                # divisions per thread and item while the tensor cores wait (run CF: packed 8k forward -1.8%)
                out = acc * mc.rows(1.0 / l_safe, acc.shape)
                lse = jnp.where(empty, -jnp.inf, (m + jnp.log2(l_safe)) * mc.LN2)
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous item's stores left o_s, lse_s
                o_s.at[wg][...] = out.astype(dtype)
                lse_s.at[wg][...] = lse
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_s.at[wg], out_ref.at[b, q_rows, h])
                plgpu.copy_smem_to_gmem(lse_s.at[wg], lse_ref.at[b, h, q_rows])
                return step + count

            lax.fori_loop(0, n_items, item, jnp.int32(0))
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    transforms = mc.mma_transforms(dtype)
    resident = plgpu.SMEM((mc.COMPUTE, mc.ROWS, head_dim), dtype, transforms=transforms)
    scratch = [
        resident, resident,  # q, out
        plgpu.SMEM((stages, kv_block, head_dim), dtype, transforms=transforms),  # k
        plgpu.SMEM((stages, kv_block, head_dim), dtype, transforms=transforms),  # v
        plgpu.SMEM((mc.COMPUTE, 2, mc.ROWS), jnp.int32),  # q segment ids / positions
        plgpu.SMEM((stages, 2, kv_block), jnp.int32),  # kv segment ids / positions
        plgpu.SMEM((mc.COMPUTE, mc.ROWS), jnp.float32),  # lse
        plgpu.SMEM((list_slots, *lists.shape[2:]), jnp.int32),  # visit lists
        mc.staging_scratch(tile, dtype, interpret=interpret),  # p (interpret mode only)
        mc.staging_scratch((mc.ROWS, head_dim), dtype, interpret=interpret),  # q (interpret mode only)
        plgpu.Barrier(num_barriers=list_slots),  # list arrived
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=list_slots),  # list released
        plgpu.Barrier(num_barriers=mc.COMPUTE),
        plgpu.Barrier(num_barriers=mc.COMPUTE),
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=stages),  # k consumed
        plgpu.Barrier(num_arrivals=mc.COMPUTE, num_barriers=stages),  # v consumed
    ]
    out_type = (jax.ShapeDtypeStruct(q.shape, dtype), jax.ShapeDtypeStruct((batch, q_heads, q_len), jnp.float32))
    run = mc.kernel(body, name="attention_forward", out_type=out_type, scratch_types=scratch,
                    grid=(work.workers,), grid_names=("w",), interpret=interpret)
    return run(q, k, v, q_tokens, kv_tokens, lists)
