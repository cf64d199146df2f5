"""How evenly the Mosaic kernels' work items spread over the SMs: a model, not a measurement.

The visit lists come from the real plan (``kernels.mosaic_plan``) for a bench mask, and the persistent
order from the real ``kernels.mosaic_schedule.Work``. An item (one resident query block of one head)
costs ``per_item + per_tile * tiles`` microseconds (defaults: ``COSTS``). ``--kernel key`` models dK/dV
instead: an item is one K/V head's key block, its tiles the query blocks of all its GQA group. Two grids:

* one CTA per item: the hardware starts the items in grid order, each on the first SM that is free
  (greedy list scheduling; one CTA per SM, as the kernels' SMEM allows);
* persistent: ``workers`` CTAs, each running the items ``Work`` gives it (snake order over waves, the
  batch rows' items in ``--order``: ``mosaic_schedule.ITEM_ORDERS``).

A ``-batchN`` mask (``causal-batch4``) splits each sequence into N batch rows of S/N tokens, as the bench's
batched rows do. Per grid it prints the makespan and its excess over the mean load, the part of a kernel's
time that imbalance costs. Usage: ``python scripts/grid_balance.py --seqs 8192,32768 --masks
causal,causal-packed4,causal-batch4 --order auto``.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import packed_tokens  # noqa: E402

from longvila_jax.kernels import mosaic_common as mc  # noqa: E402
from longvila_jax.kernels import mosaic_plan as plan  # noqa: E402
from longvila_jax.kernels import mosaic_schedule as sched  # noqa: E402


MASKS = "causal, full, causal-packedN, full-packedN, causal-batchN or full-batchN"  # what --masks takes


def mask_rows(length: int, mask: str) -> tuple[int, int, str]:
    """``(batch rows, tokens per row, the row's mask)``: ``causal-batch4`` at 8,192 tokens is 4 rows of
    2,048 plain causal tokens; any other mask one row of ``length``."""
    kind, _, rows = mask.partition("-batch")
    if not rows:
        return 1, length, mask
    if not rows.isdigit() or int(rows) < 1:
        raise ValueError(f"mask must be {MASKS}, got {mask!r}")
    if length % int(rows):
        raise ValueError(f"{length} tokens do not split into {rows} batch rows")
    return int(rows), length // int(rows), kind


def mask_tokens(length: int, mask: str):
    """Segment ids and positions ``[1, length]`` of a bench mask (``causal``, ``causal-packedN``,
    ``full``, ``full-packedN``) and whether it is causal."""
    kind, _, packed = mask.partition("-packed")
    if kind not in ("causal", "full") or (packed and not packed.isdigit()):
        raise ValueError(f"mask must be {MASKS}, got {mask!r}")
    n_segments = int(packed or 1)
    if length % n_segments:
        raise ValueError(f"{length} tokens do not split into {n_segments} samples")
    return (*packed_tokens(length, n_segments), kind == "causal")


def list_lengths(length: int, mask: str, kv_block: int) -> np.ndarray:
    """Tiles per visit list of the query blocks (forward, dQ), ``[n_lists]`` in the kernels' order (longest
    first), one batch row."""
    seg, pos, causal = mask_tokens(length, mask)
    tiles = plan.tile_table(seg, pos, seg, pos, causal=causal, block_q=mc.BLOCK, block_k=kv_block)
    lists = plan.visit_lists(tiles.visit, tiles.whole)
    return np.asarray(lists.reshape(lists.shape[0], lists.shape[1], -1)[0, :, 0])


def key_list_lengths(length: int, mask: str, q_block: int) -> np.ndarray:
    """Query blocks of ``q_block`` rows per visit list of the key blocks (dK/dV), as
    :func:`list_lengths`."""
    seg, pos, causal = mask_tokens(length, mask)
    tiles = plan.tile_table(seg, pos, seg, pos, causal=causal, block_q=q_block, block_k=mc.BLOCK)
    lists = plan.visit_lists(tiles.visit.transpose(0, 2, 1), tiles.whole.transpose(0, 2, 1))
    return np.asarray(lists.reshape(lists.shape[0], lists.shape[1], -1)[0, :, 0])


def item_costs(lengths: np.ndarray, heads: int, per_item: float, per_tile: float) -> np.ndarray:
    """Cost of item ``t`` in ``Work`` order (heads fastest): ``[n_lists * heads]``."""
    return np.repeat(per_item + per_tile * lengths.astype(np.float64), heads)


def greedy_makespan(costs: np.ndarray, sms: int) -> float:
    """Items started in order, each on the SM that frees up first."""
    free_at = [0.0] * min(sms, len(costs))
    for cost in costs:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return max(free_at)


def persistent_makespan(costs: np.ndarray, n_lists: int, heads: int, workers: int, batch: int = 1,
                        order: str = "auto") -> float:
    """Each worker runs the items ``mosaic_schedule.Work`` assigns it (``order``), back to back; ``costs``
    ``[batch * n_lists * heads]`` row after row."""
    work = sched.Work((batch, n_lists, heads), workers, order=order)
    w = jnp.arange(work.workers)[:, None]
    i = jnp.arange(-(-work.n_items // work.workers))[None, :]
    b, r, h = work.item(w, i)
    owned = np.asarray(i < work.count(w))
    t = np.asarray((b * n_lists + r) * heads + h)
    return float(np.where(owned, costs[np.where(owned, t, 0)], 0.0).sum(axis=1).max())


# per kernel: (us per item, us per tile) defaults; dQ: run V's fit (128-key tiles of one query head);
# dK/dV: run AO's 8k causal kernel time over its tiles (64-query tiles of one query head) with about 6 us
# per item, which the packed kernel's excess over a quarter of the plain one suggests
COSTS = {"query": (4.6, 2.40), "key": (6.0, 1.435)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--masks", default="causal,causal-packed4")
    parser.add_argument("--kernel", choices=sorted(COSTS), default="query",
                        help="query: the forward's and dQ's items (a query block of one head, its key blocks "
                             "streamed); key: dK/dV's (a key block of one K/V head, the query blocks of its "
                             "GQA group streamed; one CTA per item)")
    parser.add_argument("--heads", type=int, default=32, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=8, help="K/V heads (items per list for --kernel key)")
    parser.add_argument("--kv-block", type=int, default=128, help="streamed key block of the query lists")
    parser.add_argument("--q-block", type=int, default=64, help="streamed query block of the key lists")
    parser.add_argument("--per-item", type=float, help="us per item besides its tiles (default: per kernel)")
    parser.add_argument("--per-tile", type=float, help="us per visited tile of one query head (default: per kernel)")
    parser.add_argument("--sms", type=int, default=132, help="SMs (and persistent workers)")
    parser.add_argument("--order", choices=sched.ITEM_ORDERS, default="auto",
                        help="the order the persistent grid takes the batch rows' items in")
    args = parser.parse_args(argv)
    for name in ("heads", "kv_heads", "kv_block", "q_block", "sms"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive count, got {getattr(args, name)}")
    if args.heads % args.kv_heads:
        parser.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    per_item = COSTS[args.kernel][0] if args.per_item is None else args.per_item
    per_tile = COSTS[args.kernel][1] if args.per_tile is None else args.per_tile
    key_side = args.kernel == "key"
    block = f"{args.q_block}-query" if key_side else f"{args.kv_block}-key"
    print(f"model ({args.kernel} lists): {per_item} us per item + {per_tile} us per tile, {args.sms} SMs, "
          f"{args.heads} heads, {block} blocks, item order {args.order}")
    print(f"{'S':>6} {'mask':<15} {'items':>6} {'mean us':>9} {'per CTA us':>11} {'excess':>7} "
          f"{'persistent us':>14} {'excess':>7} {'order':>6}")
    for length in (int(s) for s in args.seqs.split(",")):
        for mask in args.masks.split(","):
            rows, row_length, row_mask = mask_rows(length, mask)
            if key_side:  # an item: one K/V head's key block, its group's query heads one after another
                group = args.heads // args.kv_heads
                lengths, heads = key_list_lengths(row_length, row_mask, args.q_block) * group, args.kv_heads
            else:
                lengths, heads = list_lengths(row_length, row_mask, args.kv_block), args.heads
            costs = np.tile(item_costs(lengths, heads, per_item, per_tile), rows)  # row after row
            mean = costs.sum() / args.sms
            greedy = greedy_makespan(costs, args.sms)
            snake = persistent_makespan(costs, len(lengths), heads, args.sms, rows, args.order)
            order = sched.Work((rows, len(lengths), heads), args.sms, order=args.order).order
            print(f"{length:>6} {mask:<15} {len(costs):>6} {mean:>9.1f} {greedy:>11.1f} {greedy / mean - 1:>+7.1%} "
                  f"{snake:>14.1f} {snake / mean - 1:>+7.1%} {order:>6}")


if __name__ == "__main__":
    main()
