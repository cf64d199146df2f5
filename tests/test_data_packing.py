"""Packing on the natural order, the device-order permutation, and a step's frames and frame plan."""

import numpy as np
import pytest

from longvila_jax.data import layout, packing

try:  # the device order comes from the sequence-parallel layer
    from longvila_jax.sp import balanced_order  # noqa: F401
    HAVE_SP = True
except ImportError:
    HAVE_SP = False
needs_sp = pytest.mark.skipif(not HAVE_SP, reason="longvila_jax.sp.balanced_order is not available yet")

IMG = -200
# two samples: s1 = [10, 11, <img>, 12, 13] (labels on 12, 13), s2 = [20, 21, 22] (labels on 21, 22)
S1 = {"input_ids": np.array([10, 11, IMG, 12, 13]), "label_mask": np.array([0, 0, 0, 1, 1], bool)}
S2 = {"input_ids": np.array([20, 21, 22]), "label_mask": np.array([0, 1, 1], bool)}
NATURAL = {
    "input_ids":   [10, 11, IMG, 12, 13, 20, 21, 22, 0, 0, 0, 0],
    "segment_ids": [1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0],
    "positions":   [0, 1, 2, 3, 4, 0, 1, 2, 0, 0, 0, 0],
    # next token of the same sample; 0 at a sample's end, on padding, and before a placeholder
    "targets":     [11, 0, 12, 13, 0, 21, 22, 0, 0, 0, 0, 0],
    "loss_mask":   [0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0],
    "frame_index": [-1, -1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    "frame_token": [-1, -1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1],
}
# zigzag, ring 2 (4 chunks of 3 slots): s1 (5 tokens) -> chunks [0,1] [2] [3] [4]; s2 (3) -> [] [5] [6] [7]
# (the extra token goes to the least filled chunk); padding 8..11 fills one slot per chunk.
# rank 0 takes chunks 0 and 3, rank 1 chunks 1 and 2.
ORDER = [0, 1, 8, 4, 7, 11, 2, 5, 9, 3, 6, 10]
DEVICE = {
    "input_ids":   [10, 11, 0, 13, 22, 0, IMG, 20, 0, 12, 21, 0],
    "segment_ids": [1, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0],
    "positions":   [0, 1, 0, 4, 2, 0, 2, 0, 0, 3, 1, 0],
    "targets":     [11, 0, 0, 0, 0, 0, 12, 21, 0, 13, 22, 0],
    "loss_mask":   [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0],
    "frame_index": [-1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1],
}


def test_pack_row_hand_computed():
    row = packing.pack_row([S1, S2], 12, image_token_id=IMG)
    for key, expected in NATURAL.items():
        want = [bool(v) for v in expected] if key == "loss_mask" else expected
        assert row[key].tolist() == want, key
    assert row["loss_mask"].dtype == bool and row["input_ids"].dtype == np.int32
    with pytest.raises(ValueError, match="do not fit a row of 7"):
        packing.pack_row([S1, S2], 7, image_token_id=IMG)


@needs_sp
def test_device_order_hand_computed():
    device = layout.device_order_row(packing.pack_row([S1, S2], 12, image_token_id=IMG), ring_size=2)
    assert device["natural_index"].tolist() == ORDER
    for key, expected in DEVICE.items():
        assert device[key].astype(int).tolist() == expected, key


@needs_sp
@pytest.mark.parametrize("ring_size", [1, 2, 4])
def test_device_order_keeps_every_target(rng, ring_size):
    """Random packed rows: in device order, each masked target is the natural next token of its sample."""
    seq_len = 16 * ring_size * int(rng.integers(1, 4))
    tpf = int(rng.integers(1, 4))
    samples, used = [], 0
    while True:
        length = int(rng.integers(2, seq_len // 2))
        if used + length > seq_len:
            break
        ids = rng.integers(1, 500, size=length)
        frames = int(rng.integers(0, 3))
        if frames and length > frames * tpf + 1:
            ids[1:1 + frames * tpf] = IMG
        samples.append({"input_ids": ids, "label_mask": rng.random(length) < 0.5})
        used += length
    natural = packing.pack_row(samples, seq_len, image_token_id=IMG, tokens_per_frame=tpf)
    device = layout.device_order_row(natural, ring_size)
    order = device["natural_index"]
    assert sorted(order.tolist()) == list(range(seq_len))
    inverse = np.argsort(order)
    for key in packing.ROW_KEYS:
        np.testing.assert_array_equal(device[key][inverse], natural[key])
    # no target lost at a shard seam: follow each device slot to its natural successor
    for k in np.flatnonzero(device["loss_mask"]):
        nxt = inverse[order[k] + 1]
        assert device["segment_ids"][nxt] == device["segment_ids"][k]
        assert device["positions"][nxt] == device["positions"][k] + 1
        assert device["targets"][k] == device["input_ids"][nxt]
    # each ring rank holds the same number of real tokens within one per sample
    per_rank = (device["segment_ids"] > 0).reshape(ring_size, -1).sum(axis=1)
    assert per_rank.max() - per_rank.min() <= len(samples)


@needs_sp
def test_make_batch_frames_and_plan(rng):
    tpf, ring = 2, 2
    height, width = 4, 6

    def sample(frames):
        ids = np.concatenate([[5], np.full(frames * tpf, IMG), [6, 7]]).astype(np.int32)
        return {"input_ids": ids, "label_mask": np.ones(ids.size, bool)}, \
            rng.standard_normal((frames, height, width, 3)).astype(np.float32)

    (a, fa), (b, fb), (c, fc) = sample(2), sample(1), sample(3)
    rows = [packing.pack_row([a, b], 24, image_token_id=IMG, tokens_per_frame=tpf),
            packing.pack_row([c], 24, image_token_id=IMG, tokens_per_frame=tpf)]
    batch = layout.make_batch(rows, [[fa, fb], [fc]], ring_size=ring, frames_per_batch=8,
                              frame_shape=(height, width), frame_multiple=4)
    assert batch["frames"].shape == (8, height, width, 3) and batch["input_ids"].shape == (2, 24)
    assert batch["frame_valid"].tolist() == [True] * 6 + [False] * 2
    np.testing.assert_array_equal(batch["frames"][:6], np.concatenate([fa, fb, fc]))
    assert not batch["frames"][6:].any()
    # the plan: every placeholder slot names a valid frame; frame f fills slots 0..tpf-1 in reading order
    for r in range(2):
        slots = np.flatnonzero(batch["input_ids"][r] == IMG)
        assert (batch["frame_index"][r][batch["input_ids"][r] != IMG] == -1).all()
        natural_slots = slots[np.argsort(batch["natural_index"][r][slots])]
        plan = list(zip(batch["frame_index"][r][natural_slots], batch["frame_token"][r][natural_slots]))
        first = 0 if r == 0 else 3  # row 0 holds frames 0-2 (a: 2, b: 1), row 1 frames 3-5 (c: 3)
        assert plan == [(first + f, t) for f in range(3) for t in range(tpf)]
    with pytest.raises(ValueError, match="holds 6 frames but frames_per_batch is 4"):
        layout.make_batch(rows, [[fa, fb], [fc]], ring_size=ring, frames_per_batch=4,
                          frame_shape=(height, width), frame_multiple=4)
    dynamic = layout.make_batch(rows, [[fa, fb], [fc]], ring_size=ring, frames_per_batch=0,
                                frame_shape=(height, width), frame_multiple=4)
    assert dynamic["frames"].shape[0] == 8


def test_first_fit_rows_hand_case():
    rows = packing.FirstFitRows(seq_len=10, max_frames=4, open_rows=2)
    assert rows.place("a", 6, 0) == []            # row A: a (6)
    assert rows.place("b", 5, 0) == []            # row B: b (5)
    assert rows.place("c", 4, 0) == [["a", "c"]]  # fits A exactly -> A full, emitted
    assert rows.place("d", 3, 0) == []            # B: b d (8)
    assert rows.place("e", 3, 0) == []            # new row C: e (3); open B, C
    assert rows.place("f", 9, 0) == [["b", "d"]]  # fits none, 2 open: oldest (B) emitted, new row D: f
    assert rows.place("g", 1, 4) == [["e", "g"]]  # C reaches max_frames -> emitted
    assert rows.flush() == [["f"]]
    with pytest.raises(ValueError, match="exceeds a row"):
        rows.place("h", 11, 0)


def test_check_seq_len():
    layout.check_seq_len(64, ring_size=4, ulysses_size=2)
    with pytest.raises(ValueError, match="must be a positive multiple of 12"):
        layout.check_seq_len(100, ring_size=2, ulysses_size=3)
