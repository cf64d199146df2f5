"""scripts/grid_balance.py: the real plan's list lengths and the two grids' makespans, against
hand-computed cases and a plain re-statement of the schedules."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from grid_balance import greedy_makespan, item_costs, key_list_lengths, list_lengths, main, persistent_makespan  # noqa: E402,E501


def test_list_lengths_of_causal_and_packed_masks():
    # 1,024 tokens in 128-token blocks: causal query block r sees r + 1 key blocks; longest first
    np.testing.assert_array_equal(list_lengths(1024, "causal", 128), [8, 7, 6, 5, 4, 3, 2, 1])
    # two samples of 512 tokens: each block sees its own sample's earlier blocks only
    np.testing.assert_array_equal(list_lengths(1024, "causal-packed2", 128), [4, 4, 3, 3, 2, 2, 1, 1])
    np.testing.assert_array_equal(list_lengths(1024, "full-packed2", 64), [8] * 8)


def test_key_list_lengths_of_causal_and_packed_masks():
    # 1,024 tokens, 128-key blocks, 64-query blocks: causal key block c is seen by query blocks 2c..15
    np.testing.assert_array_equal(key_list_lengths(1024, "causal", 64), [16, 14, 12, 10, 8, 6, 4, 2])
    # two samples of 512 tokens (4 key blocks, 8 query blocks each): only the own sample's later queries
    np.testing.assert_array_equal(key_list_lengths(1024, "causal-packed2", 64), [8, 8, 6, 6, 4, 4, 2, 2])
    np.testing.assert_array_equal(key_list_lengths(1024, "full-packed2", 128), [4] * 8)


def test_key_lists_model_one_item_per_kv_head_with_the_group_tiles(capsys):
    # 512 tokens causal: key lists [8, 6, 4, 2] 64-query blocks, times a group of 4 heads; 2 K/V heads
    main(["--seqs", "512", "--masks", "causal", "--kernel", "key", "--heads", "8", "--kv-heads", "2",
          "--per-item", "1", "--per-tile", "0.5", "--sms", "2"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    # items cost 1 + 0.5 * 4 * [8, 8, 6, 6, 4, 4, 2, 2] = [17, 17, 13, 13, 9, 9, 5, 5]: 88 over 2 SMs, mean 44;
    # greedy: 17 | 17, 13 | 13, 9 | 9, 5 | 5 -> 44 each
    assert row[:6] == ["512", "causal", "8", "44.0", "44.0", "+0.0%"]
    for bad in (["--heads", "6", "--kv-heads", "4"], ["--kv-heads", "0"], ["--q-block", "0"], ["--sms", "0"]):
        with pytest.raises(SystemExit):
            main(["--kernel", "key", *bad])
    assert "--kv-heads must be a positive count, got 0" in capsys.readouterr().err


def test_bad_mask_names_the_choices():
    with pytest.raises(ValueError, match="causal-packedN"):
        list_lengths(1024, "sliding", 128)
    with pytest.raises(ValueError, match="do not split"):
        list_lengths(1000, "causal-packed3", 128)


def test_hand_computed_makespans():
    costs = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    # greedy on 2 SMs: 5 | 4, then 3 on the second (7), 2 on the first (7), 1 on either (8)
    assert greedy_makespan(costs, 2) == 8.0
    # snake over 2 workers: wave 0 gives items 0, 1 to workers 0, 1; wave 1 gives item 2 to worker 1 and
    # item 3 to worker 0; the last, partial wave item 4 to worker 0: 5 + 2 + 1 = 8 against 4 + 3 = 7
    assert persistent_makespan(costs, n_lists=5, heads=1, workers=2) == 8.0
    np.testing.assert_array_equal(item_costs(np.array([3, 1]), heads=2, per_item=1.0, per_tile=2.0), [7, 7, 3, 3])


def snake_loads(costs, workers):
    """The persistent schedule as mosaic_schedule's docstring states it, written out item by item."""
    loads = np.zeros(workers)
    for t, cost in enumerate(costs):
        wave, position = divmod(t, workers)
        loads[position if wave % 2 == 0 else workers - 1 - position] += cost
    return loads


def greedy_loads(costs, sms):
    finish = np.zeros(sms)
    for cost in costs:
        finish[np.argmin(finish)] += cost
    return finish


@pytest.mark.parametrize("n_lists,heads,workers", [(13, 3, 5), (16, 4, 7), (9, 2, 18)])
def test_makespans_match_the_schedules_written_out(rng, n_lists, heads, workers):
    lengths = np.sort(rng.integers(1, 20, n_lists))[::-1]
    costs = item_costs(lengths, heads, per_item=rng.uniform(1, 5), per_tile=rng.uniform(0.5, 3))
    assert persistent_makespan(costs, n_lists, heads, workers) == pytest.approx(
        snake_loads(costs, min(workers, len(costs))).max())
    assert greedy_makespan(costs, workers) == pytest.approx(greedy_loads(costs, min(workers, len(costs))).max())


@pytest.mark.parametrize("order,makespan", [("batch", "9.0"), ("rank", "7.0"), ("auto", "7.0")])
def test_batch_rows_by_rank_even_out_the_persistent_grid(capsys, order, makespan):
    # 2 rows of 512 causal tokens: each row's lists [4, 3, 2, 1] tiles, 1 us per tile, one head, 3 workers.
    # Row after row the items are [4, 3, 2, 1, 4, 3, 2, 1]; snake waves give worker 0 4 + 3 + 2, worker 1
    # 3 + 4 + 1, worker 2 2 + 1: 9. By rank they are [4, 4, 3, 3, 2, 2, 1, 1]: 4 + 2 + 1, 4 + 2 + 1, 3 + 3: 7.
    main(["--seqs", "1024", "--masks", "causal-batch2", "--heads", "1", "--kv-heads", "1", "--per-item", "0",
          "--per-tile", "1", "--sms", "3", "--order", order])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:4] == ["1024", "causal-batch2", "8", "6.7"]
    assert row[6] == makespan
    assert row[8] == ("batch" if order == "batch" else "rank")  # auto: several short rows on a persistent grid


def test_bad_batch_mask_names_the_choices():
    from grid_balance import mask_rows

    assert mask_rows(8192, "causal-batch4") == (4, 2048, "causal")
    assert mask_rows(8192, "full-packed4") == (1, 8192, "full-packed4")
    with pytest.raises(ValueError, match="causal-batchN"):
        mask_rows(1024, "causal-batchx")
    with pytest.raises(ValueError, match="do not split into 3 batch rows"):
        mask_rows(1024, "causal-batch3")
