"""A step placed on the simulated 8-device mesh: shardings, values, and the frame plan on device."""

import numpy as np
import pytest

from longvila_jax.data import packing
from longvila_jax.data.device import put_batch
from longvila_jax.data.layout import make_batch
from longvila_jax.data.sharding import Shard, frame_multiple_from_mesh, shard_from_mesh


def _step(rng, *, rows, seq_len, ring, tpf, frames_per_batch, hw=(4, 4), image_id=-200):
    naturals, row_frames = [], []
    for _ in range(rows):
        samples, chunks, used = [], [], 0
        while True:
            n = int(rng.integers(0, 3))
            text = int(rng.integers(2, 12))
            if used + text + n * tpf > seq_len:
                break
            ids = rng.integers(1, 400, size=text + n * tpf).astype(np.int32)
            ids[1:1 + n * tpf] = image_id
            samples.append({"input_ids": ids, "label_mask": rng.random(ids.size) < 0.5})
            chunks.append(rng.standard_normal((n,) + hw + (3,)).astype(np.float32))
            used += ids.size
        naturals.append(packing.pack_row(samples, seq_len, image_token_id=image_id, tokens_per_frame=tpf))
        row_frames.append(chunks)
    return make_batch(naturals, row_frames, ring_size=ring, frames_per_batch=frames_per_batch, frame_shape=hw,
                      frame_multiple=8)


def test_put_batch_on_mesh(rng):
    import jax
    import jax.numpy as jnp

    from longvila_jax.sharding import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = make_mesh(data=2, ring=2, ulysses=2, devices=jax.devices()[:8])
    assert shard_from_mesh(mesh) == Shard(0, 1) and frame_multiple_from_mesh(mesh) == 8
    batch = _step(rng, rows=2, seq_len=32, ring=2, tpf=2, frames_per_batch=32)
    placed = put_batch(batch, mesh)
    for key in ("input_ids", "targets", "loss_mask", "frame_index", "frames", "frame_valid"):
        np.testing.assert_array_equal(np.asarray(placed[key]), batch[key], err_msg=key)
    # each device holds one row's quarter of the sequence, and a quarter of... an eighth of the frames
    assert {s.data.shape for s in placed["input_ids"].addressable_shards} == {(1, 8)}
    assert {s.data.shape for s in placed["frames"].addressable_shards} == {(4, 4, 4, 3)}

    @jax.jit
    def slot_means(frames, frame_index, frame_token):
        # what the splice does with the plan: slot k takes token frame_token[k] of frame frame_index[k]
        per_token = frames.reshape(frames.shape[0], 2, -1).mean(-1)  # two "visual tokens" per frame
        value = per_token[jnp.maximum(frame_index, 0), jnp.maximum(frame_token, 0)]
        return jnp.where(frame_index >= 0, value, 0.0)

    got = np.asarray(slot_means(placed["frames"], placed["frame_index"], placed["frame_token"]))
    per_token = batch["frames"].reshape(batch["frames"].shape[0], 2, -1).mean(-1)
    want = np.where(batch["frame_index"] >= 0,
                    per_token[np.maximum(batch["frame_index"], 0), np.maximum(batch["frame_token"], 0)], 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
