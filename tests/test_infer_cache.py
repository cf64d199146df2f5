"""KV-cache decoding against the full forward pass (float32, relative error <= 1e-5).

The reference is the model's own cache-free forward (``Decoder.__call__`` /
``LongVILA.__call__``) over the prompt plus the generated tokens; the cache
path (prefill, then decode steps through ``sp.decode.cached_attention``) must
give the same logits at every generated position.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longvila_jax.demo import load_preset
from longvila_jax.infer.generate import Generator
from longvila_jax.kernels.testing import rel_err
from longvila_jax.models.config import RuntimeConfig
from longvila_jax.models.kv_cache import KVCache, empty_block
from longvila_jax.models.llm import Decoder
from longvila_jax.models.longvila import LongVILA

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_config():
    return load_preset("tiny")


@pytest.mark.parametrize("layout", ["permuted", "prefix"])
def test_decoder_cache_steps_match_full_forward(tiny_config, seed, rng, layout):
    """Rows of different lengths (padding in the prompt), decode chunks of 1 and 3 tokens; the prompt in a
    random device order, or in natural order through the plain causal fast path (``prefix_rows``)."""
    cfg = tiny_config.llm
    decoder = Decoder(cfg, RuntimeConfig(), nnx.Rngs(seed))
    batch, prompt_len, new = 2, 24, 7
    lengths = np.array([prompt_len, int(rng.integers(5, prompt_len))])
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, prompt_len + new)).astype(np.int32)
    # row 1's real prompt is shorter: its generated tokens follow its own prompt directly
    rows = [np.concatenate([tokens[b, :lengths[b]], tokens[b, prompt_len:]]) for b in range(batch)]
    want = [np.asarray(decoder(jnp.asarray(r[None])))[0] for r in rows]

    natural = np.arange(prompt_len)[None].repeat(batch, 0)
    segment_ids = (natural < lengths[:, None]).astype(np.int32)
    positions = np.where(segment_ids > 0, natural, 0).astype(np.int32)
    if layout == "permuted":  # any device order is exact
        order = np.stack([rng.permutation(prompt_len) for _ in range(batch)])
    else:
        order = natural
    take = lambda a: jnp.asarray(np.take_along_axis(a, order, axis=1))  # noqa: E731
    prompt_ids = np.where(segment_ids > 0, tokens[:, :prompt_len], 0)
    hidden, block = decoder.prefill(decoder.embed(take(prompt_ids)), positions=take(positions),
                                    segment_ids=take(segment_ids), prefix_rows=layout == "prefix")
    prefill_logits = np.asarray(decoder.logits(hidden))
    for b in range(batch):
        got = np.take_along_axis(prefill_logits[b], np.argsort(order[b])[:, None], axis=0)[:lengths[b]]
        assert rel_err(got, want[b][:lengths[b]]) <= TOL

    cache = KVCache(block, empty_block(block, 16))

    @nnx.jit
    def decode(decoder, ids, positions, cache, step):
        hidden, cache = decoder.decode(decoder.embed(ids), positions=positions, segment_ids=jnp.ones_like(ids),
                                       cache=cache, step=step)
        return decoder.logits(hidden), cache

    done = 0
    for chunk in (1, 3, 1, 2):  # several new tokens at once attend to each other causally
        ids = tokens[:, prompt_len + done:prompt_len + done + chunk]
        pos = lengths[:, None] + done + np.arange(chunk)[None]
        logits, cache = decode(decoder, jnp.asarray(ids), jnp.asarray(pos, jnp.int32), cache, jnp.int32(done))
        for b in range(batch):
            ref = want[b][lengths[b] + done:lengths[b] + done + chunk]
            assert rel_err(logits[b], ref) <= TOL, (chunk, done, b)
        done += chunk


def test_generate_logits_match_full_video_forward(tiny_config, seed, rng):
    """Generator on one device: every generated position's logits equal LongVILA's forward over prompt + output."""
    model = LongVILA(tiny_config, rngs=nnx.Rngs(seed))
    frames, text = 3, (18, 11)
    size = tiny_config.vision.image_size
    rows = []
    for length in text:
        row = rng.integers(3, tiny_config.llm.vocab_size, size=length).astype(np.int32)
        slots = np.sort(rng.choice(np.arange(1, length), frames, replace=False))
        row[slots] = tiny_config.image_token_id
        rows.append(row)
    pixels = rng.uniform(-1, 1, size=(2 * frames, size, size, 3)).astype(np.float32)
    out = Generator(model).generate(rows, pixel_values=pixels, max_new_tokens=6, return_logits=True)
    assert out.logits.shape[:2] == (2, 6)
    for b in range(2):
        full = np.concatenate([rows[b], np.asarray(out.tokens[b][:-1], np.int32)])[None]
        ref = np.asarray(model(full, pixels[b * frames:(b + 1) * frames]))[0]
        start = out.layout.lengths[b] - 1
        assert rel_err(out.logits[b], ref[start:start + 6]) <= TOL
        assert out.tokens[b] == np.argmax(ref[start:start + 6], axis=-1).tolist()  # greedy = argmax
