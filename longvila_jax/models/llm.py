"""The LLM decoder (Llama family and Qwen2): pre-norm blocks of GQA attention and SwiGLU.

Activations are ``[B, S, embed]`` in device order; RoPE and the attention mask
come from per-token ``positions`` and ``segment_ids`` ``[B, S]`` int32, so the
same code serves packed rows and sequence-parallel layouts.

Generation (``prefill`` and ``decode``) runs the same layers with a KV cache
(``models.kv_cache``): the prefill returns every layer's K/V, a decode step
attends its new tokens over the cache through ``sp.decode``.  ``mesh`` is
passed through to ``sp`` unchanged (None: one device); this module names no
mesh axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from longvila_jax import sp
from longvila_jax.models.config import LLMConfig, RuntimeConfig
from longvila_jax.models.kv_cache import KVBlock, KVCache, write_tokens
from longvila_jax.models.layers import Dense, Embed, RMSNorm
from longvila_jax.models.rope import apply_rope, inverse_frequencies, rope_tables
from longvila_jax.models.stacking import scan_layers, stack_layers
from longvila_jax.sp.decode import cached_attention


class SelfAttention(nnx.Module):
    """GQA self-attention with RoPE; heads ``Hq``, key/value heads ``Hkv``."""

    def __init__(self, cfg: LLMConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        kw = dict(dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.q_proj = Dense(d, cfg.num_heads * hd, ("embed", "q_proj"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Dense(d, cfg.num_kv_heads * hd, ("embed", "kv_proj"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Dense(d, cfg.num_kv_heads * hd, ("embed", "kv_proj"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Dense(cfg.num_heads * hd, d, ("q_proj", "embed"), use_bias=cfg.o_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.attn_impl = rt.attn_impl

    def project(self, x, cos, sin):
        """``[B, S, embed]`` -> q ``[B, S, Hq, D]``, k and v ``[B, S, Hkv, D]``, RoPE applied to q and k."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).reshape(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, out):
        """Attention output ``[B, S, Hq, D]`` -> ``[B, S, embed]``."""
        batch, seq = out.shape[:2]
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim))

    def __call__(self, x, *, cos, sin, positions, segment_ids, mesh=None):
        q, k, v = self.project(x, cos, sin)
        out = sp.attention(q, k, v, segment_ids=segment_ids, positions=positions, mesh=mesh, causal=True,
                           impl=self.attn_impl)
        out = checkpoint_name(out, "attention_out")
        return self.output(out)

    def prefill(self, x, *, cos, sin, positions, segment_ids, mesh=None, prefix_rows=False):
        """The forward over a whole prompt on ``mesh``; also returns its ``(k, v)`` ``[B, S, Hkv, D]``."""
        q, k, v = self.project(x, cos, sin)
        out = sp.attention(q, k, v, segment_ids=segment_ids, positions=positions, mesh=mesh, causal=True,
                           impl=self.attn_impl, prefix_rows=prefix_rows)
        return self.output(out), (k, v)

    def decode(self, x, *, cos, sin, positions, segment_ids, prompt: KVBlock, recent: KVBlock, step, mesh=None):
        """``T`` new tokens ``[B, T, embed]`` over this layer's cache.

        Writes their K/V into ``recent`` at slots ``[step, step + T)`` (its
        ids/positions are already written), attends over ``prompt`` (sharded)
        and ``recent``; returns the output and the updated ``(k, v)`` of ``recent``.
        """
        q, k, v = self.project(x, cos, sin)
        start = (0, jnp.asarray(step, jnp.int32), 0, 0)
        recent_k = jax.lax.dynamic_update_slice(recent.k, k.astype(recent.k.dtype), start)
        recent_v = jax.lax.dynamic_update_slice(recent.v, v.astype(recent.v.dtype), start)
        out = cached_attention(q, segment_ids=segment_ids, positions=positions, sharded=tuple(prompt),
                               local=(recent_k, recent_v, recent.segment_ids, recent.positions), mesh=mesh)
        return self.output(out), (recent_k, recent_v)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LLMConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(use_bias=cfg.mlp_bias, dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.gate_proj = Dense(d, f, ("embed", "mlp"), **kw)
        self.up_proj = Dense(d, f, ("embed", "mlp"), **kw)
        self.down_proj = Dense(f, d, ("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LLMConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, dtype=rt.dtype, param_dtype=rt.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = SelfAttention(cfg, rt, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = SwiGLU(cfg, rt, rngs)

    def __call__(self, x, **attn_inputs):
        x = x + self.self_attn(self.input_layernorm(x), **attn_inputs)
        return x + self.mlp(self.post_attention_layernorm(x))

    def with_cache(self, x, method: str, **attn_inputs):
        """The block with ``self_attn.<method>`` (``prefill`` or ``decode``); returns ``(x, its K/V)``."""
        out, kv = getattr(self.self_attn, method)(self.input_layernorm(x), **attn_inputs)
        x = x + out
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Decoder(nnx.Module):
    """Embedding, the scanned decoder stack, final norm and LM head."""

    def __init__(self, cfg: LLMConfig, rt: RuntimeConfig, rngs: nnx.Rngs):
        self.config, self.runtime = cfg, rt
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)
        self.layers = stack_layers(lambda r: DecoderLayer(cfg, rt, r), cfg.num_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=rt.dtype, param_dtype=rt.param_dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Dense(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=False,
            dtype=rt.dtype, param_dtype=rt.param_dtype, rngs=rngs)

    def embed(self, token_ids: jax.Array) -> jax.Array:
        """``[B, S]`` ids -> ``[B, S, embed]``; ids outside the vocabulary must be masked by the caller."""
        return self.embed_tokens(token_ids)

    def hidden_states(self, inputs_embeds, *, positions=None, segment_ids=None, mesh=None):
        """Final-norm hidden states ``[B, S, embed]`` for ``inputs_embeds`` ``[B, S, embed]``.

        With a ``mesh`` attention is sequence-parallel over its ``ring`` and
        ``ulysses`` axes (the sequence in device order, e.g. ``sp.balanced_order``).
        """
        batch, seq, _ = inputs_embeds.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        cos, sin = rope_tables(positions, inverse_frequencies(self.config.head_dim, dict(self.config.rope)))
        hidden = scan_layers(self.layers, inputs_embeds.astype(self.runtime.dtype), remat=self.runtime.remat,
                             cos=cos, sin=sin, positions=positions, segment_ids=segment_ids, mesh=mesh)
        return self.norm(hidden)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``[..., embed]`` -> float32 ``[..., vocab]``."""
        out = self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, input_ids, *, positions=None, segment_ids=None):
        return self.logits(self.hidden_states(self.embed(input_ids), positions=positions, segment_ids=segment_ids))

    def rope(self, positions):
        """cos, sin ``[B, S, head_dim]`` for ``positions`` ``[B, S]``."""
        return rope_tables(positions, inverse_frequencies(self.config.head_dim, dict(self.config.rope)))

    def _scan_with_cache(self, hidden, per_layer, method: str, layer_inputs):
        """Runs the stacked layers with ``DecoderLayer.with_cache``, scanning ``per_layer`` (leading ``layers``
        axis) with the parameters; ``layer_inputs(per_layer_slice)`` gives the attention's keyword arguments."""
        graphdef, state = nnx.split(self.layers)

        def body(carry, xs):
            layer_state, layer_slice = xs
            layer = nnx.merge(graphdef, layer_state)
            return layer.with_cache(carry, method, **layer_inputs(layer_slice))

        return jax.lax.scan(body, hidden.astype(self.runtime.dtype), (state, per_layer))

    def prefill(self, inputs_embeds, *, positions, segment_ids, mesh=None, prefix_rows=False):
        """A whole prompt: final-norm hidden ``[B, S, embed]`` and its cache block (K/V ``[L, B, S, Hkv, D]``).

        The prompt may be in any token order (e.g. ``sp.balanced_order``); with
        a ``mesh`` the sequence is sharded over its ring and ulysses axes.
        ``prefix_rows``: rows are in natural order with trailing padding
        (``sp.attention``'s fast path; hidden states of padding are then not 0,
        and the cache keeps their segment 0 so that decoding never sees them).
        """
        cos, sin = self.rope(positions)
        inputs = dict(cos=cos, sin=sin, positions=positions, segment_ids=segment_ids, mesh=mesh,
                      prefix_rows=prefix_rows)
        hidden, (k, v) = self._scan_with_cache(inputs_embeds, None, "prefill", lambda _: inputs)
        block = KVBlock(k, v, segment_ids.astype(jnp.int32), positions.astype(jnp.int32))
        return self.norm(hidden), block

    def decode(self, inputs_embeds, *, positions, segment_ids, cache: KVCache, step, mesh=None):
        """``T`` new tokens ``[B, T, embed]`` at recent slots ``[step, step + T)``: final-norm hidden and the new cache.

        Each new token sees the prompt and every generated token written so
        far (itself included) through the mask of ``positions``/``segment_ids``.
        ``step + T`` must not exceed ``cache.capacity`` (a write past the end
        would be clamped onto the last slots).
        """
        cos, sin = self.rope(positions)
        recent = write_tokens(cache.recent, step, segment_ids=segment_ids, positions=positions)
        prompt = cache.prompt

        def layer_inputs(kv):
            (prompt_k, prompt_v), (recent_k, recent_v) = kv
            return dict(cos=cos, sin=sin, positions=positions, segment_ids=segment_ids, step=step, mesh=mesh,
                        prompt=prompt._replace(k=prompt_k, v=prompt_v), recent=recent._replace(k=recent_k, v=recent_v))

        per_layer = ((prompt.k, prompt.v), (recent.k, recent.v))
        hidden, (k, v) = self._scan_with_cache(inputs_embeds, per_layer, "decode", layer_inputs)
        return self.norm(hidden), KVCache(prompt, recent._replace(k=k, v=v))
