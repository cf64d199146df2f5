"""Host-side prompt layout: splice lengths, bucketing, masks, and the balanced device order."""

import numpy as np
import pytest

from longvila_jax.infer.layout import layout_prompts, quantum
from longvila_jax.sp.order import balanced_order

IMAGE = -200


def test_layout_hand_computed():
    rows = [np.array([5, IMAGE, 7, IMAGE, 9]), np.array([IMAGE, 3, IMAGE])]
    lay = layout_prompts(rows, image_token_id=IMAGE, tokens_per_frame=4, ring=2, ulysses=1, bucket=8)
    # spliced lengths: 5 - 2 + 8 = 11 and 3 - 2 + 8 = 9; padded to a multiple of lcm(2*2*1, 8) = 8 -> 16
    assert lay.lengths.tolist() == [11, 9] and lay.length == 16 and lay.frames_per_row == 2
    assert lay.input_ids.shape == (2, 16 - 6)  # text ids whose splice gives exactly 16 tokens
    assert lay.input_ids[1].tolist() == [IMAGE, 3, IMAGE] + [0] * 7
    natural_seg = np.array([[1] * 11 + [0] * 5, [1] * 9 + [0] * 7])
    order, inverse = balanced_order(natural_seg, 2)
    assert np.array_equal(lay.order, order) and np.array_equal(lay.inverse, inverse)
    assert np.array_equal(lay.segment_ids, np.take_along_axis(natural_seg, order, 1))
    natural_pos = np.where(natural_seg > 0, np.arange(16), 0)
    assert np.array_equal(lay.positions, np.take_along_axis(natural_pos, order, 1))
    last = lay.last_index()
    assert lay.positions[0, last[0, 0]] == 10 and lay.positions[1, last[1, 0]] == 8
    assert np.all(lay.segment_ids[np.arange(2)[:, None], last] == 1)
    assert not lay.is_prefix  # the zigzag order of ring 2 permutes
    one = layout_prompts(rows, image_token_id=IMAGE, tokens_per_frame=4, ring=1, ulysses=2, bucket=8)
    assert one.is_prefix  # no ring: natural order, real tokens first (the plain causal fast path)
    assert np.array_equal(one.segment_ids, natural_seg)


def test_layout_buckets_and_errors(rng):
    assert quantum(4, 2, 128) == 128 and quantum(3, 1, 4) == 12
    row = rng.integers(1, 100, size=int(rng.integers(20, 60)))
    lay = layout_prompts([row], image_token_id=IMAGE, tokens_per_frame=4, ring=4, ulysses=2, bucket=64,
                         min_length=130)
    assert lay.length == 192  # max(len, 130) rounded up to a multiple of lcm(16, 64)
    with pytest.raises(ValueError, match=r"hold \[1, 0\] image placeholders"):
        layout_prompts([np.array([IMAGE, 1]), np.array([1, 2])], image_token_id=IMAGE, tokens_per_frame=4)
    with pytest.raises(ValueError, match="at least one token"):
        layout_prompts([np.array([], np.int32)], image_token_id=IMAGE, tokens_per_frame=4)
