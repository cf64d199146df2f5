"""Host side: the zigzag balanced order, the work report and the block skip test."""

import numpy as np
import pytest

from longvila_jax.sp import attention_work, balanced_order
from longvila_jax.sp.blocks import block_may_attend
from longvila_jax.sp.order import sample_runs


def random_pack(rng, length, n_samples, pad_max):
    """Natural order: ``n_samples`` random-length samples, then 0..pad_max padding tokens."""
    used = length - int(rng.integers(0, pad_max + 1))
    cuts = np.sort(rng.choice(np.arange(1, used), n_samples - 1, replace=False))
    seg = np.zeros(length, np.int32)
    pos = np.zeros(length, np.int32)
    bounds = np.concatenate([[0], cuts, [used]])
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        seg[lo:hi] = i
        pos[lo:hi] = np.arange(hi - lo)
    return seg, pos


def dense_mask(seg, pos, causal):
    mask = (seg[:, None] == seg[None, :]) & (seg[:, None] != 0)
    if causal:
        mask &= pos[None, :] <= pos[:, None]
    return mask


@pytest.mark.parametrize("ring", [1, 2, 4, 8])
def test_balanced_order_is_a_permutation_with_its_inverse(rng, ring):
    seg, _ = random_pack(rng, 512, int(rng.integers(1, 9)), 100)
    order, inverse = balanced_order(seg, ring)
    assert order.shape == inverse.shape == (512,)
    assert np.array_equal(np.sort(order), np.arange(512))
    natural = rng.standard_normal(512)
    device = natural[order]
    assert np.array_equal(device[inverse], natural)


def test_balanced_order_single_sample_is_zigzag():
    ring, length = 4, 64
    chunk = length // (2 * ring)
    order, _ = balanced_order(np.ones(length, np.int32), ring)
    for rank in range(ring):
        local = order[rank * 2 * chunk:(rank + 1) * 2 * chunk]
        want = np.concatenate([np.arange(rank * chunk, (rank + 1) * chunk),
                               np.arange((2 * ring - 1 - rank) * chunk, (2 * ring - rank) * chunk)])
        assert np.array_equal(local, want), rank


def test_balanced_order_padding_rule(rng):
    """Each half slot holds chunk r (or 2R-1-r) of every sample in natural order, then padding."""
    ring, length = 4, 256
    half = length // (2 * ring)
    seg, _ = random_pack(rng, length, 5, 60)
    order, _ = balanced_order(seg, ring)
    runs = sample_runs(seg)
    device_seg = seg[order]
    for slot in range(2 * ring):
        ids = device_seg[slot * half:(slot + 1) * half]
        real = ids[ids != 0]
        assert np.all(ids[real.size:] == 0), "padding must close each half slot"
        assert np.all(np.diff(real) >= 0), "samples keep their natural order inside a half slot"
        assert np.all(np.diff(order[slot * half:slot * half + real.size]) > 0)
    # every sample is split into 2R contiguous chunks whose sizes differ by at most one
    for start, end in runs:
        sizes = [np.sum(device_seg[s * half:(s + 1) * half] == seg[start]) for s in range(2 * ring)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == end - start


def test_balanced_order_batch_rows(rng):
    rows = np.stack([random_pack(rng, 128, 3, 20)[0] for _ in range(3)])
    order, inverse = balanced_order(rows, 2)
    for b in range(3):
        assert np.array_equal(order[b], balanced_order(rows[b], 2)[0])
        assert np.array_equal(np.take_along_axis(order, inverse, 1)[b], np.arange(128))


def test_balanced_order_rejects_lengths_not_multiple_of_2r():
    with pytest.raises(ValueError, match="multiple of 2\\*ring_size = 8"):
        balanced_order(np.ones(100, np.int32), 4)


@pytest.mark.parametrize("causal", [True, False])
def test_work_report_counts_pairs_exactly(rng, causal):
    ring, length = 4, 128
    seg, pos = random_pack(rng, length, 4, 20)
    order = rng.permutation(length)
    report = attention_work(seg, pos, ring, order=order, causal=causal)
    mask = dense_mask(seg[order], pos[order], causal)
    local = length // ring
    want = mask.reshape(ring, local, ring, local).sum(axis=(1, 3))
    assert np.array_equal(report.pairs, want)


@pytest.mark.parametrize("ring", [2, 4, 8])
def test_balanced_order_balances_one_causal_sample(ring):
    length = 2048
    seg, pos = np.ones(length, np.int32), np.arange(length, dtype=np.int32)
    balanced = attention_work(seg, pos, ring, order=balanced_order(seg, ring)[0])
    contiguous = attention_work(seg, pos, ring)
    assert balanced.imbalance <= 1.05
    assert balanced.block_imbalance == 1.0
    assert np.all(balanced.blocks_per_rank < balanced.sub_blocks ** 2 * ring), "zigzag must skip blocks"
    assert contiguous.imbalance == pytest.approx((2 * ring - 1) / ring, rel=0.01)  # -> 2x as R grows


@pytest.mark.parametrize("ring", [2, 4, 8])
def test_balanced_order_balances_packs(rng, ring):
    # at least 6 packs, more until one whose contiguous order is badly balanced has been seen: on 2 ranks 43% of
    # random packs stay within 1.2 contiguously, so 6 draws alone missed one in about 160 runs (30: 1 in 10^11)
    worst_contiguous, packs = 1.0, 0
    while packs < 6 or (worst_contiguous <= 1.2 and packs < 30):
        seg, pos = random_pack(rng, 4096, int(rng.integers(2, 9)), 400)
        balanced = attention_work(seg, pos, ring, order=balanced_order(seg, ring)[0])
        assert balanced.imbalance <= 1.05, balanced.pairs_per_rank
        worst_contiguous = max(worst_contiguous, attention_work(seg, pos, ring).imbalance)
        packs += 1
    assert worst_contiguous > 1.2


def test_block_skip_never_drops_a_live_block(rng):
    """Whenever the range test says 'empty', the dense mask agrees; and it does skip some."""
    skipped = 0
    for _ in range(200):
        length = 64
        seg, pos = random_pack(rng, length, int(rng.integers(1, 4)), 20)
        perm = [np.arange(length), rng.permutation(length), balanced_order(seg, 4)[0]][int(rng.integers(3))]
        seg, pos = seg[perm], pos[perm]
        q_start, kv_start = rng.integers(0, length - 1, 2)
        q_idx = slice(q_start, q_start + int(rng.integers(1, 17)))
        kv_idx = slice(kv_start, kv_start + int(rng.integers(1, 17)))
        causal = bool(rng.random() < 0.7)
        live = bool(block_may_attend(seg[None, q_idx], pos[None, q_idx], seg[None, kv_idx], pos[None, kv_idx],
                                     causal=causal))
        truth = bool(dense_mask(seg, pos, causal)[q_idx, kv_idx].any())
        assert live or not truth
        skipped += not live
    assert skipped > 10
