"""Sequence-parallel prefill and distributed decode on 8 simulated devices against one device.

* ``sp.decode.cached_attention`` (partials per cache shard, merged by
  log-sum-exp) equals the dense float32 reference over the whole cache.
* A sequence-parallel ``Generator`` gives the logits of every prompt token
  and the greedy tokens of a one-device ``Generator`` (itself checked
  against the full forward in ``test_infer_cache``).
* The compiled decode step moves only the small partials: the cache stays
  sharded along the sequence and no collective is as large as a cache shard.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from longvila_jax.demo import load_preset
from longvila_jax.infer.generate import Generator
from longvila_jax.kernels import reference_attention
from longvila_jax.kernels.testing import rel_err
from longvila_jax.models.longvila import LongVILA
from longvila_jax.sharding import make_mesh
from longvila_jax.sp.decode import cached_attention

TOL = 1e-5


@pytest.mark.parametrize("axes", [dict(ring=8), dict(ring=2, ulysses=2, data=2)])
def test_cached_attention_merges_shards_exactly(axes, seed, rng):
    mesh = make_mesh(**axes)
    batch, new, prompt_len, recent_len, q_heads, kv_heads, dim = 2, 2, 64, 8, 8, 2, 16
    normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    q = normal(batch, new, q_heads, dim)
    prompt_k, prompt_v = normal(batch, prompt_len, kv_heads, dim), normal(batch, prompt_len, kv_heads, dim)
    recent_k, recent_v = normal(batch, recent_len, kv_heads, dim), normal(batch, recent_len, kv_heads, dim)
    prompt_seg = (rng.random((batch, prompt_len)) < 0.8).astype(np.int32)  # scattered padding
    prompt_pos = np.stack([rng.permutation(prompt_len) for _ in range(batch)]).astype(np.int32)
    recent_seg = np.zeros((batch, recent_len), np.int32)
    recent_seg[:, :5] = 1  # 3 generated + the 2 new tokens; the rest empty
    recent_pos = np.broadcast_to(prompt_len + np.arange(recent_len), (batch, recent_len)).astype(np.int32)
    q_seg = np.ones((batch, new), np.int32)
    q_pos = recent_pos[:, 3:5]
    seq = NamedSharding(mesh, P(None, ("ring", "ulysses")))
    prompt = tuple(jax.device_put(x, seq) for x in (prompt_k, prompt_v, prompt_seg, prompt_pos))
    local = (recent_k, recent_v, jnp.asarray(recent_seg), jnp.asarray(recent_pos))
    got = jax.jit(lambda q, s, p, a, b: cached_attention(q, segment_ids=s, positions=p, sharded=a, local=b,
                                                         mesh=mesh))(q, q_seg, q_pos, prompt, local)
    cat = lambda a, b: jnp.concatenate([jnp.asarray(a), jnp.asarray(b)], axis=1)  # noqa: E731
    want, _ = reference_attention(q, cat(prompt_k, recent_k), cat(prompt_v, recent_v), q_segment_ids=q_seg,
                                  kv_segment_ids=cat(prompt_seg, recent_seg), q_positions=q_pos,
                                  kv_positions=cat(prompt_pos, recent_pos))
    assert rel_err(got, want) <= TOL


@pytest.fixture(scope="module")
def video_case():
    """A tiny LongVILA, two video prompts of different lengths, and one-device results (logits of every
    prompt token; greedy generation)."""
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    config = load_preset("tiny")
    model = LongVILA(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    frames, size = 4, config.vision.image_size
    rows = []
    for length in (30, 21):
        row = rng.integers(3, config.llm.vocab_size, size=length).astype(np.int32)
        slots = np.sort(rng.choice(np.arange(1, length - 4), frames, replace=False))
        row[slots] = config.image_token_id
        rows.append(row)
    pixels = rng.uniform(-1, 1, size=(2 * frames, size, size, 3)).astype(np.float32)
    one = Generator(model)
    lengths = one.layout(rows).lengths
    query = np.minimum(np.arange(lengths.max())[None], lengths[:, None] - 1)  # every prompt token of each row
    prompt_logits = np.asarray(one.prefill(rows, pixel_values=pixels, query_index=query).logits)
    greedy = one.generate(rows, pixel_values=pixels, max_new_tokens=5, return_logits=True)
    return dict(model=model, rows=rows, pixels=pixels, query=query, prompt_logits=prompt_logits, greedy=greedy)


@pytest.mark.parametrize("axes", [dict(ring=8), dict(ring=2, ulysses=4), dict(data=2, ring=2, ulysses=2)])
def test_sp_prefill_and_greedy_match_one_device(video_case, axes):
    sp = Generator(video_case["model"], make_mesh(**axes))
    rows, pixels = video_case["rows"], video_case["pixels"]
    frames_spec = sp.encode(pixels).sharding.spec[0]  # the vision tower's frames split over all 8 devices
    assert set(frames_spec if isinstance(frames_spec, tuple) else (frames_spec,)) == set(axes)
    pre = sp.prefill(rows, pixel_values=pixels, query_index=video_case["query"])
    assert rel_err(pre.logits, video_case["prompt_logits"]) <= TOL
    ring, ulysses = axes.get("ring", 1), axes.get("ulysses", 1)
    spec = pre.cache.prompt.k.sharding.spec  # [L, B, S, Hkv, D]: split along S over the sequence axes
    assert (tuple(spec[2]) if isinstance(spec[2], tuple) else (spec[2],)) == tuple(a for a, n in (("ring", ring), ("ulysses", ulysses)) if n > 1)
    out = sp.generate(rows, pixel_values=pixels, max_new_tokens=5, return_logits=True)
    assert out.tokens == video_case["greedy"].tokens
    assert rel_err(out.logits, video_case["greedy"].logits) <= TOL


def _collective_sizes(hlo: str) -> list[int]:
    """Element counts of the results of every collective in compiled HLO text."""
    sizes = []
    for line in hlo.splitlines():
        match = re.search(r"= \w+\[([\d,]*)\][^ ]* (all-gather|all-reduce|all-to-all|collective-permute|"
                          r"reduce-scatter)", line)
        if match:
            sizes.append(int(np.prod([int(d) for d in match.group(1).split(",") if d])))
    return sizes


def test_decode_step_moves_partials_not_the_cache(video_case):
    gen = Generator(video_case["model"], make_mesh(ring=4, ulysses=2))
    pre = gen.prefill(video_case["rows"], pixel_values=video_case["pixels"], recent_slots=4)
    lengths = jnp.asarray(pre.layout.lengths)
    hlo = gen.decode_step.lower(gen.state, pre.cache, jnp.zeros(2, jnp.int32), lengths, jnp.int32(0),
                                jax.random.PRNGKey(0), jnp.float32(0), jnp.float32(1)).compile().as_text()
    sizes = _collective_sizes(hlo)
    layers, batch, length, kv_heads, dim = pre.cache.prompt.k.shape
    partials = 8 * batch * gen.llm_config.num_heads * dim  # gathered outputs [8, B, 1, Hq, D]
    assert partials < batch * length * kv_heads * dim  # (the test can tell them from one layer's K)
    assert sizes, "the decode step must merge partials across the 8 cache shards"
    assert max(sizes) <= partials
