"""The three compiled steps of generation: encode frames, prefill a prompt, decode one token.

Each takes the model's parameter state (``nnx.split``) as an argument, so the
module graph is traversed once, not per call.  Shapes (B rows, S the padded
prompt, K query tokens, F frames, T tokens per frame, M recent slots):

* ``encode(state, pixels [F, H, W, 3]) -> visual [F, T, E]``, frames split
  over every device (F a multiple of the device count).
* ``prefill(state, ids [B, S_text], visual [B*n, T, E] | None, order [B, S],
  positions [B, S], segment_ids [B, S], query_index [B, K]) -> (logits
  [B, K, V] float32, KVBlock)``: splice in natural order, permute into the
  device order, run the decoder sequence-parallel, return the logits of the
  K device-order indices and the prompt's cache block, left sharded along S.
  Static ``prefix_rows``: the layout is the natural order with trailing
  padding (``PromptLayout.is_prefix``), so the plain causal kernel serves.
* ``decode(state, cache, tokens [B], positions [B], step, key, temperature,
  top_p) -> (next tokens [B], logits [B, V], cache)``: one new token per row
  at recent slot ``step``; the cache is donated (updated in place).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax.infer import placement
from longvila_jax.infer.sampling import sample_tokens
from longvila_jax.models.kv_cache import KVCache
from longvila_jax.models.longvila import safe_token_ids


def language_model(model):
    """The decoder of a LongVILA (``model.llm``) or a CausalLM (the model itself)."""
    return getattr(model, "llm", model)


def make_steps(graphdef, mesh):
    """``(encode, prefill, decode)`` jitted for ``graphdef`` on ``mesh``."""

    @jax.jit
    def encode(state, pixels):
        model = nnx.merge(graphdef, state)
        pixels = placement.constrain(pixels, mesh, "frames")
        return placement.constrain(model.encode_frames(pixels), mesh, "frames")

    @functools.partial(jax.jit, static_argnames=("prefix_rows",))
    def prefill(state, input_ids, visual, order, positions, segment_ids, query_index, prefix_rows=False):
        model = nnx.merge(graphdef, state)
        llm = language_model(model)
        if visual is None:
            embeds = llm.embed(safe_token_ids(input_ids, llm.config.vocab_size))
        else:
            embeds = model.embed_inputs(input_ids, visual)
        embeds = jnp.take_along_axis(embeds, order[..., None], axis=1)
        embeds = placement.constrain(embeds, mesh, "embeds")
        positions = placement.constrain(positions, mesh, "tokens")
        segment_ids = placement.constrain(segment_ids, mesh, "tokens")
        hidden, block = llm.prefill(embeds, positions=positions, segment_ids=segment_ids, mesh=mesh,
                                    prefix_rows=prefix_rows)
        block = block._replace(k=placement.constrain(block.k, mesh, "cache"),
                               v=placement.constrain(block.v, mesh, "cache"))
        picked = jnp.take_along_axis(hidden, query_index[..., None], axis=1)
        return llm.logits(picked), block

    @functools.partial(jax.jit, donate_argnums=(1,))
    def decode(state, cache: KVCache, tokens, positions, step, key, temperature, top_p):
        llm = language_model(nnx.merge(graphdef, state))
        ones = jnp.ones_like(tokens)[:, None]
        hidden, cache = llm.decode(llm.embed(tokens[:, None]), positions=positions[:, None], segment_ids=ones,
                                   cache=cache, step=step, mesh=mesh)
        logits = llm.logits(hidden[:, 0])
        next_tokens = sample_tokens(logits, jax.random.fold_in(key, step + 1), temperature, top_p)
        return next_tokens, logits, cache

    return encode, prefill, decode
