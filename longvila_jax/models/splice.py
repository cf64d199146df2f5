"""Splicing visual tokens into the text sequence.

Each placeholder token of ``input_ids`` is replaced by the ``T`` visual tokens
of the next frame in reading order; every other token keeps its embedding.
A row of ``S`` tokens with ``n`` placeholders becomes ``S - n + n*T`` tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def count_placeholders(input_ids, image_token_id: int, num_frames: int) -> int:
    """Placeholders per row ``n``; checks, when the ids are concrete, that every row has ``n`` and ``B*n == num_frames``."""
    batch = input_ids.shape[0]
    if num_frames % batch:
        raise ValueError(
            f"pixel_values holds {num_frames} frames for a batch of {batch} rows; every row must hold the "
            f"same number of image placeholders (id {image_token_id}), so frames must be a multiple of {batch}"
        )
    per_row = num_frames // batch
    if not isinstance(input_ids, jax.core.Tracer):
        counts = np.sum(np.asarray(input_ids) == image_token_id, axis=1)
        if np.any(counts != per_row):
            raise ValueError(
                f"input_ids rows hold {counts.tolist()} image placeholders (id {image_token_id}) but pixel_values "
                f"has {num_frames} frames = {per_row} per row; give one frame per placeholder, in reading order"
            )
    return per_row


def splice_visual_tokens(input_ids: jax.Array, text_embeds: jax.Array, visual_tokens: jax.Array,
                         image_token_id: int) -> jax.Array:
    """``[B, S]`` ids, ``[B, S, D]`` text embeddings, ``[B*n, T, D]`` visual tokens -> ``[B, S - n + n*T, D]``."""
    batch, seq = input_ids.shape
    frames, tokens_per_frame, _ = visual_tokens.shape
    per_row = frames // batch
    out_len = seq - per_row + per_row * tokens_per_frame
    is_placeholder = input_ids == image_token_id
    span = jnp.where(is_placeholder, tokens_per_frame, 1)
    span_end = jnp.cumsum(span, axis=1)
    frame_in_row = jnp.cumsum(is_placeholder, axis=1) - 1

    def one_row(row, ends, placeholder, frame_of_token, embeds):
        out_pos = jnp.arange(out_len)
        source = jnp.searchsorted(ends, out_pos, side="right")
        offset = out_pos - (ends[source] - jnp.where(placeholder[source], tokens_per_frame, 1))
        frame = row * per_row + jnp.clip(frame_of_token[source], 0, per_row - 1)
        visual = visual_tokens[jnp.clip(frame, 0, frames - 1), jnp.clip(offset, 0, tokens_per_frame - 1)]
        return jnp.where(placeholder[source][:, None], visual.astype(embeds.dtype), embeds[source])

    return jax.vmap(one_row)(jnp.arange(batch), span_end, is_placeholder, frame_in_row, text_embeds)
