"""Which CTA of a Mosaic GPU kernel runs which resident block, and the memory thread's loop over them.

A work item is one resident block of one head: ``(b, r, h)`` over ``(B, n_lists, H)``, heads fastest
(the heads of one GQA group run side by side and share their streamed blocks in L2), ``r`` naming a
visit list (each batch row's lists come longest first, :mod:`.mosaic_plan`). Items are taken in
``ITEM_ORDERS`` order: "batch" (``b`` slowest: one row's lists, then the next row's) or "rank" (``r``
slowest: every row's longest list, then every row's second, so the whole call runs longest first).
With ``workers`` equal to the number of items every CTA runs one item (a grid as large as the work).
With fewer workers (the SM count) the grid is persistent: worker ``w`` runs items in waves of
``workers``, in snake order (``w`` in even waves, ``workers - 1 - w`` in odd ones) so that long and
short lists even out over the waves; that needs the lengths to fall along the order, which "batch"
breaks at each row's end when a row's items fill only a few waves (4 rows of 2k causal tokens, under 4
waves each: the forward's worker loads 22% over their mean against 3% by rank, ``scripts/grid_balance.py``).
"auto" takes "rank" there (a persistent grid, B > 1, a row's items under ``ROW_WAVES`` waves) and
"batch" elsewhere, where the rows' order costs no balance and one row's blocks stay together in L2. The
memory thread then streams the blocks of all its items as one sequence: the SMEM slots refill across
an item boundary, and the next item's visit list is fetched while the compute threads finish the
current one (lists are double-buffered, released on ``list_free``). With ``lookahead`` there are three
list slots and the memory thread fetches item i + 1's list as it starts item i, so the compute threads
can fetch item i + 1's resident rows as soon as item i begins.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .mosaic_common import BLOCK, MEMORY, ROWS, drain, list_entry, registers, stream_tiles

LIST_SLOTS = 2  # visit lists a persistent CTA holds in SMEM: the current item's and the next one's
LOOKAHEAD_SLOTS = 3  # with lookahead: the previous item's (until released), the current and the next one's
# SMEM the list slots of a persistent CTA may take: the forward kernel holds about 196 KB of
# tiles beside them (of 227 KB). Longer lists (two slots: over 3,070 streamed blocks, 393k keys in 128-key
# blocks; three: over 2,046, 262k keys) run one CTA per block, with one slot.
LIST_SMEM_BYTES = 24 * 1024
ITEM_ORDERS = ("auto", "rank", "batch")
# "auto" orders a persistent grid's items by rank when one batch row's items fill fewer waves than this
# (the model's worker loads over their mean, 132 workers, 32 heads, causal rows, batch order against rank:
# 2k +22.4% / +3.1%, 4k +8.9% / +0.3%, 8k +0.4% / +0.1%: scripts/grid_balance.py --masks causal-batch4)
ROW_WAVES = 8


def item_order(shape: tuple[int, int, int], workers: int, order: str = "auto") -> str:
    """``order`` with "auto" resolved (module docstring) for ``shape = (B, n_lists, H)`` items on
    ``workers`` CTAs: "rank" or "batch"."""
    if order not in ITEM_ORDERS:
        raise ValueError(f"work item order must be one of {ITEM_ORDERS}, got {order!r}")
    if order != "auto":
        return order
    batch, n_lists, heads = shape
    persistent = workers < batch * n_lists * heads
    return "rank" if persistent and batch > 1 and n_lists * heads < ROW_WAVES * workers else "batch"


class Work:
    """Items ``(b, r, h)`` of a ``shape = (B, n_lists, H)`` grid shared by ``workers`` CTAs, taken in
    ``order`` (``ITEM_ORDERS``; the module docstring)."""

    def __init__(self, shape: tuple[int, int, int], workers: int, list_slots: int = 1, order: str = "auto"):
        self.shape = shape
        self.n_items = shape[0] * shape[1] * shape[2]
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = min(workers, self.n_items)
        self.order = item_order(shape, self.workers, order)
        self.list_slots = list_slots
        # the memory thread fetches item i + 1's list as it starts item i (needs a third slot)
        self.lookahead = list_slots >= LOOKAHEAD_SLOTS

    def list_slot(self, i):
        """The SMEM list slot of item ``i``."""
        return lax.rem(i, self.list_slots)

    def count(self, w):
        """How many items worker ``w`` (traced) runs."""
        full, rest = divmod(self.n_items, self.workers)
        if rest == 0:
            return jnp.int32(full)
        # the last, partial wave goes to the first ``rest`` positions in wave order
        position = w if full % 2 == 0 else self.workers - 1 - w
        return full + (position < rest).astype(jnp.int32)

    def item(self, w, i):
        """``(b, r, h)`` of worker ``w``'s ``i``-th item."""
        position = jnp.where(lax.rem(i, 2) == 0, w, self.workers - 1 - w)
        t = i * self.workers + position
        batch, n_lists, heads = self.shape
        if self.order == "rank":
            return lax.rem(t // heads, batch), t // (batch * heads), lax.rem(t, heads)
        return t // (n_lists * heads), lax.rem(t // heads, n_lists), lax.rem(t, heads)


def plan_work(shape: tuple[int, int, int], workers: int | None, list_shape: tuple[int, ...],
              lookahead: bool = False, order: str = "auto"):
    """``(Work, list slots)`` for a kernel over ``shape = (B, n_lists, H)`` items whose visit lists
    have ``list_shape`` (``[..., rows, row_len]`` int32): a persistent grid of ``workers`` CTAs with
    two list slots (``lookahead``: three, see the module docstring), or (``workers`` None, or the
    slots too large for ``LIST_SMEM_BYTES``) one CTA per item with one slot. ``order``: the items'
    (``ITEM_ORDERS``)."""
    n_items = shape[0] * shape[1] * shape[2]
    list_bytes = 4 * list_shape[-1] * list_shape[-2]
    slots = LOOKAHEAD_SLOTS if lookahead else LIST_SLOTS
    if workers is None or workers >= n_items or slots * list_bytes > LIST_SMEM_BYTES:
        return Work(shape, n_items, order=order), 1
    return Work(shape, workers, slots, order=order), slots


def fetch_list(work, w, i, list_ref, list_s, list_bar, list_free):
    """The memory thread's copy of item ``i``'s visit list into its slot, once the compute threads
    released the item that held the slot before."""
    slot = work.list_slot(i)

    @pl.when(i >= work.list_slots)
    def _():
        plgpu.barrier_wait(list_free.at[slot])

    b, r, _ = work.item(w, i)
    plgpu.copy_gmem_to_smem(list_ref.at[b, r], list_s.at[slot], list_bar.at[slot])


def item_rows(work, w, list_s, i, wg):
    """``(b, h, rows)`` of worker ``w``'s item ``i`` for compute thread ``wg``: its 64 rows of the
    resident block that the item's visit list (arrived) names."""
    b, _, h = work.item(w, i)
    resident = list_entry(list_s.at[work.list_slot(i)], 1)
    return b, h, pl.ds(resident * BLOCK + wg * ROWS, ROWS)


def fetch_item(work, w, list_s, list_bar, i, wg, copies):
    """A compute thread's start of item ``i``: wait for its visit list, then start the TMA copies
    ``copies(b, h, rows)`` returns, ``[(gmem, smem, barrier)]`` of the thread's resident rows."""
    plgpu.barrier_wait(list_bar.at[work.list_slot(i)])
    for src, dst, bar in copies(*item_rows(work, w, list_s, i, wg)):
        plgpu.copy_gmem_to_smem(src, dst, bar)


def memory_thread(wg, work, w, list_ref, list_s, list_bar, list_free, issue, consumed, stages: int,
                  v_consumed=None):
    """The body of thread ``MEMORY``: for each item of worker ``w``, fetch its list and
    ``issue(b, h, list, j, slot)`` the copies of its j-th visited block (:func:`.mosaic_common.stream_tiles`,
    slots counted across items). With ``v_consumed``, ``issue`` is a pair as there."""

    @pl.when(wg == MEMORY)
    def _():
        registers(compute=False)
        n_items = work.count(w)

        def fetch(i):
            fetch_list(work, w, i, list_ref, list_s, list_bar, list_free)

        if work.lookahead:
            @pl.when(n_items > 0)
            def _():
                fetch(0)

        def item(i, step):
            if work.lookahead:  # item i's list is on its way: ask for the next one now
                @pl.when(i + 1 < n_items)
                def _():
                    fetch(i + 1)
            else:
                fetch(i)
            list_i = list_s.at[work.list_slot(i)]
            plgpu.barrier_wait(list_bar.at[work.list_slot(i)])
            b, _, h = work.item(w, i)
            if v_consumed is not None:
                bound = tuple(functools.partial(f, b, h, list_i) for f in issue)
            else:
                bound = functools.partial(issue, b, h, list_i)
            count = list_entry(list_i, 0)
            stream_tiles(step, count, bound, consumed, stages, v_consumed=v_consumed)
            return step + count

        steps = lax.fori_loop(0, n_items, item, jnp.int32(0))
        drain(steps, consumed, stages, v_consumed=v_consumed)

        def drain_lists(i, carry):  # every completion of list_free is awaited too
            plgpu.barrier_wait(list_free.at[work.list_slot(i)])
            return carry

        lax.fori_loop(jnp.maximum(n_items - work.list_slots, 0), n_items, drain_lists, None)
