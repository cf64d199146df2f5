"""KV-cache generation with sequence-parallel prefill: the ``Generator`` API.

``Generator(model, mesh)`` places the parameters (replicated) on ``mesh``
(default: one device; the same code runs on any mesh) and compiles the steps
of ``infer.steps``.  ``generate`` prefills a batch of prompts (frames split
over all devices for the vision tower, the prompt in balanced order over the
ring and ulysses axes), keeps the prompt's KV cache where it was computed,
then decodes one token per row per step until every row has produced a stop
token or ``max_new_tokens`` tokens.

Token ``i`` (0-based) of a row is drawn with ``fold_in(PRNGKey(seed), i)``,
so a seed fixes the output.  Row ``b``'s generated token ``i`` has position
``length_b + i``.  The step after token ``i`` is dispatched before token
``i`` is read back, so the device never waits for the host.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longvila_jax.infer import placement
from longvila_jax.infer.layout import PromptLayout, layout_prompts
from longvila_jax.infer.sampling import sample_tokens
from longvila_jax.infer.steps import language_model, make_steps
from longvila_jax.models.kv_cache import KVCache, empty_block
from longvila_jax.sp.dispatch import axis_sizes

RECENT_BUCKET = 16  # recent-cache slots are rounded up to a multiple of this (fewer compiled shapes)
_first_token = jax.jit(sample_tokens)


@dataclasses.dataclass
class Generation:
    """``tokens``: per row, the generated ids (a final stop token included); ``finished``: per row, whether
    it stopped on a stop token; ``logits``: float32 ``[B, N, V]`` of every generated position when asked."""

    tokens: list[list[int]]
    finished: list[bool]
    layout: PromptLayout
    logits: np.ndarray | None = None


@dataclasses.dataclass
class Prefill:
    """A prefilled batch: ``logits`` float32 ``[B, K, V]`` at the asked indices, the cache, the layout."""

    logits: jax.Array
    cache: KVCache
    layout: PromptLayout


class Generator:
    """Generation for a ``LongVILA`` (or ``CausalLM``) on a mesh.

    ``bucket``: prompt lengths are padded to a multiple of it (and of
    ``2 * ring * ulysses``), so prompts of similar length share one compile.
    ``frames_per_call``: frames per vision-tower call (bounds its memory).
    """

    def __init__(self, model, mesh=None, *, bucket: int = 128, frames_per_call: int = 256):
        self.mesh = mesh if mesh is not None else placement.single_device_mesh()
        self.model = model
        self.llm_config = language_model(model).config
        graphdef, state = nnx.split(model)
        self.state = jax.device_put(state, placement.replicated(self.mesh))
        self.encode_step, self.prefill_step, self.decode_step = make_steps(graphdef, self.mesh)
        self.ring, self.ulysses = axis_sizes(self.mesh)
        self.bucket, self.frames_per_call = bucket, frames_per_call

    @property
    def tokens_per_frame(self) -> int:
        return self.model.config.tokens_per_frame if hasattr(self.model, "encode_frames") else 1

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id if hasattr(self.model, "encode_frames") else -200

    def encode(self, pixel_values) -> jax.Array:
        """Normalized frames ``[F, H, W, 3]`` -> visual tokens ``[F, T, E]``, in chunks split over all devices."""
        pixels = np.asarray(pixel_values, np.float32)
        devices = placement.device_count(self.mesh)
        chunk = max(devices, self.frames_per_call // devices * devices)
        out = []
        for start in range(0, pixels.shape[0], chunk):
            part = pixels[start:start + chunk]
            count = part.shape[0]
            padded = -(-count // devices) * devices
            part = np.concatenate([part, np.zeros((padded - count,) + part.shape[1:], part.dtype)])
            part = jax.device_put(part, placement.sharding(self.mesh, "frames", part.shape))
            out.append(self.encode_step(self.state, part)[:count])
        return out[0] if len(out) == 1 else jnp.concatenate(out)

    def layout(self, rows: Sequence[np.ndarray], min_length: int = 0) -> PromptLayout:
        return layout_prompts(list(rows), image_token_id=self.image_token_id, tokens_per_frame=self.tokens_per_frame,
                              ring=self.ring, ulysses=self.ulysses, bucket=self.bucket, min_length=min_length)

    def prefill(self, rows: Sequence[np.ndarray], visual=None, *, pixel_values=None, query_index=None,
                recent_slots: int = RECENT_BUCKET, min_length: int = 0) -> Prefill:
        """Prefills prompt rows (1-D ids with ``n`` placeholders each) with visual tokens ``[B*n, T, E]``
        (or ``pixel_values`` ``[B*n, H, W, 3]``, encoded here).

        ``query_index``: natural-order token indices ``[B, K]`` whose logits to
        return (default: each row's last token).  ``recent_slots``: room for
        generated tokens in the cache.
        """
        layout = self.layout(rows, min_length)
        frames = layout.frames_per_row * len(rows)
        if pixel_values is not None:
            visual = self.encode(pixel_values)
        if frames and (visual is None or visual.shape[0] != frames):
            got = "none" if visual is None else visual.shape[0]
            raise ValueError(f"the prompts hold {frames} image placeholders ({layout.frames_per_row} per row) but "
                             f"{got} frames were given; give one frame per placeholder, in reading order")
        if not frames:
            visual = None
        index = layout.last_index() if query_index is None else layout.device_index(query_index)
        put = lambda a, kind: jax.device_put(a, placement.sharding(self.mesh, kind, a.shape))  # noqa: E731
        logits, block = self.prefill_step(
            self.state, jnp.asarray(layout.input_ids), visual, put(layout.order, "tokens"),
            put(layout.positions, "tokens"), put(layout.segment_ids, "tokens"), jnp.asarray(index),
            prefix_rows=layout.is_prefix)
        slots = -(-max(1, recent_slots) // RECENT_BUCKET) * RECENT_BUCKET
        recent = jax.device_put(empty_block(jax.eval_shape(lambda: block), slots), placement.replicated(self.mesh))
        return Prefill(logits, KVCache(block, recent), layout)

    def generate(self, rows: Sequence[np.ndarray], visual=None, *, pixel_values=None, max_new_tokens: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_ids: Sequence[int] = (),
                 on_tokens: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                 return_logits: bool = False) -> Generation:
        """Generates up to ``max_new_tokens`` tokens per row.

        ``on_tokens(i, tokens [B], active [B])`` is called as token ``i`` of
        every row arrives (``active``: rows still generating; for streaming).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        pre = self.prefill(rows, visual, pixel_values=pixel_values, recent_slots=max_new_tokens - 1)
        key = jax.random.PRNGKey(seed)
        temp, nucleus = jnp.float32(temperature), jnp.float32(top_p)
        tokens = _first_token(pre.logits[:, 0], jax.random.fold_in(key, 0), temp, nucleus)
        step_logits = [pre.logits[:, 0]]
        cache, lengths = pre.cache, jnp.asarray(pre.layout.lengths)
        batch = len(rows)
        out: list[list[int]] = [[] for _ in range(batch)]
        active = np.ones(batch, bool)
        stops = set(int(s) for s in stop_ids)
        for i in range(max_new_tokens):
            if i + 1 < max_new_tokens:  # dispatch the next step before reading this one back
                next_tokens, logits, cache = self.decode_step(self.state, cache, tokens, lengths + i, jnp.int32(i),
                                                              key, temp, nucleus)
            host = np.asarray(tokens)
            was_active = active.copy()
            for b in np.flatnonzero(active):
                out[b].append(int(host[b]))
                if int(host[b]) in stops:
                    active[b] = False
            if on_tokens is not None:
                on_tokens(i, host, was_active)
            if not active.any() or i + 1 == max_new_tokens:
                break
            tokens = next_tokens
            if return_logits:
                step_logits.append(logits)
        finished = [bool(out[b] and out[b][-1] in stops) for b in range(batch)]
        stacked = np.stack([np.asarray(x) for x in step_logits], axis=1) if return_logits else None
        return Generation(out, finished, pre.layout, stacked)
