"""The MM-SP training step on an 8-device mesh equals the same step on one device (float32).

Each case builds 4 rows of packed video samples (random lengths, several
samples per row, padding, frames spread over the rows), in the balanced
device order of the mesh's ring size.  The sharded step runs them as two
micro-batches of 2 rows (gradient accumulation) on the ring, Ulysses or 2D
mesh with the parameters sharded ZeRO-3; the reference is one batch of all
4 rows on a single device.  Loss and every gradient must agree to 1e-5
relative per parameter (a parameter whose true gradient is zero, such as
the vision key bias, is held to 1e-7 of the global gradient norm instead).
The compiled sharded step must contain the scheme's collective, so the test
fails if attention silently falls back to the single-device kernel.  And the
step's loss equals cross-entropy computed by hand from the model's own
forward (``LongVILA.__call__``, which splices visual tokens itself).
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from longvila_jax.data.packing import pack_row
from longvila_jax.models.longvila import LongVILA
from longvila_jax.sharding import make_mesh
from longvila_jax.train import shardings as sh
from longvila_jax.train.freeze import split_trainable
from longvila_jax.train.step import loss_and_grads
from train_helpers import random_rows, stack, tiny_config, to_step

SEQ, FRAMES, CHUNK = 256, 16, 128


@pytest.fixture(scope="module")
def model_parts():
    config = tiny_config()
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"model seed={seed}")
    graphdef, trainable, _ = split_trainable(LongVILA(config, rngs=nnx.Rngs(seed)), "all")
    reference = jax.jit(functools.partial(loss_and_grads, graphdef, frozen={}, vocab_chunk=CHUNK))
    return config, graphdef, trainable, reference


def assert_grads_close(got, want, rtol=1e-5):
    total = float(np.sqrt(sum(np.sum(np.square(np.asarray(w, np.float64))) for w in jax.tree.leaves(want))))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err, scale = np.linalg.norm(g - w), np.linalg.norm(w)
        assert err <= rtol * scale + 1e-7 * total, f"{jax.tree_util.keystr(path)}: |diff| {err:.3g} vs |ref| {scale:.3g}"


@pytest.mark.parametrize("data,ring,ulysses,collective", [(1, 8, 1, "collective-permute"),
                                                          (1, 1, 8, "all-to-all"),
                                                          (2, 2, 2, "collective-permute")],
                         ids=["ring8", "ulysses8", "2d"])
def test_sharded_step_equals_single_device(model_parts, rng, data, ring, ulysses, collective):
    config, graphdef, trainable, reference = model_parts
    params = nnx.to_pure_dict(trainable)
    rows, frames = random_rows(config, rng, rows=4, seq_len=SEQ, frames_per_batch=2 * FRAMES, samples_per_row=(2, 3))
    whole = to_step(config, rows, frames, ring_size=ring, frames_per_batch=2 * FRAMES)
    micro = stack(*(to_step(config, rows[i:i + 2], frames[i:i + 2], ring_size=ring, frames_per_batch=FRAMES)
                    for i in (0, 2)))
    assert (whole["segment_ids"] == 0).any() and whole["segment_ids"].max() >= 2 and whole["frame_index"].max() > 0

    ref_loss, ref_grads, ref_count = reference(params, batches=stack(whole))

    mesh = make_mesh(data=data, ring=ring, ulysses=ulysses)
    sharded_params = jax.device_put(params, sh.param_shardings(trainable, mesh))
    sharded_batch = jax.device_put(micro, sh.batch_shardings(micro, mesh, leading=1))
    fn = jax.jit(lambda p, b: loss_and_grads(graphdef, p, {}, b, mesh=mesh, vocab_chunk=CHUNK))
    with jax.set_mesh(mesh):
        compiled = fn.lower(sharded_params, sharded_batch).compile()
    assert collective in compiled.as_text(), f"no {collective}: attention did not run sequence-parallel"
    loss, grads, count = compiled(sharded_params, sharded_batch)

    assert float(count) == float(ref_count) > 0
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert_grads_close(grads, ref_grads)


def test_step_loss_matches_the_models_own_forward(model_parts, rng):
    """Stages 1-2 and the loss against an independent path: ``LongVILA.__call__`` on the sample in natural
    order with one placeholder per frame (the model splices T tokens each), and cross-entropy by hand."""
    config, graphdef, trainable, _ = model_parts
    model = nnx.merge(graphdef, trainable)
    tpf, image, vocab = config.tokens_per_frame, config.image_token_id, config.llm.vocab_size
    frames = int(rng.integers(1, 4))
    words = rng.integers(1, vocab, int(rng.integers(12, 30))).astype(np.int32)
    cut = int(rng.integers(1, 6))
    short = np.concatenate([words[:cut], np.tile([image, 13], frames), words[cut:]]).astype(np.int32)
    labels_short = np.zeros(short.size, bool)
    labels_short[-int(rng.integers(3, 10)):] = True
    pixels = rng.standard_normal((frames, config.vision.image_size, config.vision.image_size, 3)).astype(np.float32)
    logits = np.asarray(jax.jit(lambda m, i, p: m(i, p))(model, short[None], pixels))[0].astype(np.float64)

    # the expanded sequence the model saw: T slots per placeholder; labels follow their tokens
    expanded = np.concatenate([[image] * tpf if t == image else [t] for t in short]).astype(np.int32)
    labels = np.concatenate([[l] * tpf if t == image else [l] for t, l in zip(short, labels_short)])
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = [-logp[i, expanded[i + 1]] for i in range(expanded.size - 1) if labels[i + 1] and expanded[i + 1] != image]

    seq = (expanded.size // 8 + 2) * 8  # padding included
    row = pack_row([{"input_ids": expanded, "label_mask": labels}], seq, image_token_id=image, tokens_per_frame=tpf)
    step = to_step(config, [row], [[pixels]], ring_size=2, frames_per_batch=8)  # device order of ring 2
    loss, _, count = jax.jit(lambda p, b: loss_and_grads(graphdef, p, {}, b, vocab_chunk=CHUNK))(
        nnx.to_pure_dict(trainable), stack(step))
    assert int(count) == len(want) > 0
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
