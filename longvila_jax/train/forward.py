"""The MM-SP forward pass of one micro-batch: frames -> visual tokens -> LLM -> summed loss.

Inputs are a step of the data pipeline (``longvila_jax.data``), all global
arrays, per-token ones ``[B, S]`` in device order:

1. Vision (stage 1): ``frames [F, H, W, 3]`` sharded evenly over every mesh
   device; the SigLIP tower and the projector run on each device's frames
   with no communication -> ``visual [F, T, embed]``, sharded the same way.
2. Splice (stage 2): slot ``k`` of the sequence is fed by visual token
   ``frame_token[k]`` of frame ``frame_index[k]`` (``-1``: a text token).
   The plan rides with the per-token arrays, so each device knows which
   visual tokens its slots need.  The collective is one all-gather of
   ``visual`` (``F * T * embed`` values per device, small next to the
   activations: 256 frames of Llama-3-8B are 0.4 GB in bf16) followed by a
   local gather; text slots embed locally.
3. LLM (stage 3): the decoder on the device-order sequence with the
   pipeline's ``positions`` and ``segment_ids``; attention is
   ``sp.attention`` over ``ring`` x ``ulysses`` (the mesh passed down to it).
4. Loss: ``train.loss.chunked_cross_entropy`` on the pipeline's
   ``targets``/``loss_mask`` (computed in natural order before the
   permutation, so no target is lost at a shard seam).

A step without ``frames`` (text-only stages) skips 1 and 2.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from longvila_jax.models.longvila import safe_token_ids
from longvila_jax.sharding import mesh_axes_for
from longvila_jax.train.loss import chunked_cross_entropy, token_losses
from longvila_jax.train.shardings import constrain


def lm_head(llm) -> jax.Array:
    """The LM head as ``[embed, vocab]`` (the embedding table transposed when tied)."""
    if llm.lm_head is None:
        return llm.embed_tokens.embedding[...].T
    return llm.lm_head.kernel[...]


def splice_slots(visual: jax.Array, text: jax.Array, frame_index: jax.Array, frame_token: jax.Array) -> jax.Array:
    """``visual [F, T, D]``, text embeddings ``[B, S, D]``, plan ``[B, S]`` -> embeddings ``[B, S, D]``."""
    frames, tokens, _ = visual.shape
    slot = visual[jnp.clip(frame_index, 0, frames - 1), jnp.clip(frame_token, 0, tokens - 1)]
    return jnp.where((frame_index >= 0)[..., None], slot.astype(text.dtype), text)


def encode_frames(model, frames: jax.Array, mesh=None) -> jax.Array:
    """Stage 1: ``[F, H, W, 3]`` -> ``[F, T, embed]``, each device encoding its own frames.

    With a mesh the tower and projector run inside ``shard_map`` over the
    frames axis: their (ZeRO-3 sharded) weights are gathered once on entry,
    and no activation crosses devices.  (Left to the SPMD partitioner, the
    blockwise attention kernel's loops lose the frames sharding and get
    replicated.)
    """
    if mesh is None:
        return model.encode_frames(frames)
    spec = mesh_axes_for(("frames",), mesh)[0]
    tower_def, tower = nnx.split(model.vision_tower)
    proj_def, proj = nnx.split(model.mm_projector)
    grid = model.config.vision.grid

    def local(tower, proj, frames):
        return nnx.merge(proj_def, proj)(nnx.merge(tower_def, tower)(frames), grid)

    # check_vma=False: the single-device kernels know nothing of manual axes (as in sp.dispatch); the
    # weights enter replicated, so their cotangents are summed over the mesh by shard_map's transpose.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(spec)), out_specs=P(spec),
                         check_vma=False)(tower, proj, frames)


def input_embeddings(model, batch: dict, mesh=None) -> jax.Array:
    """Stages 1-2: ``[B, S, embed]`` embeddings of a step (visual slots filled from ``batch['frames']``)."""
    ids = batch["input_ids"]
    text = model.llm.embed(safe_token_ids(ids, model.config.llm.vocab_size))
    text = constrain(text, mesh, ("batch", "seq", None))
    if "frames" not in batch:
        return text
    frames = constrain(batch["frames"], mesh, ("frames", None, None, None))
    visual = encode_frames(model, frames, mesh)
    visual = constrain(visual, mesh, ("frames", None, None))          # stage 1: local to each device
    visual = constrain(visual, mesh, (None, None, None))              # the one collective: all-gather
    embeds = splice_slots(visual, text, batch["frame_index"], batch["frame_token"])
    return constrain(embeds, mesh, ("batch", "seq", None))


def final_hidden(model, batch: dict, mesh=None) -> jax.Array:
    """Stages 1-3: final-norm hidden states ``[B, S, embed]`` of a step, in its device order."""
    embeds = input_embeddings(model, batch, mesh)
    hidden = model.llm.hidden_states(embeds, positions=batch["positions"], segment_ids=batch["segment_ids"],
                                     mesh=mesh)
    return constrain(hidden, mesh, ("batch", "seq", None))


def loss_terms(model, batch: dict, *, mesh=None, vocab_chunk: int = 8192) -> tuple[jax.Array, jax.Array]:
    """``(loss_sum, count)`` float32 scalars of one micro-batch (global sums over the mesh)."""
    hidden = final_hidden(model, batch, mesh)
    head = constrain(lm_head(model.llm), mesh, (None, None))
    return chunked_cross_entropy(hidden, head, batch["targets"], batch["loss_mask"], chunk=vocab_chunk,
                                 dtype=model.llm.runtime.dtype)


def row_losses(model, batch: dict, *, mesh=None, vocab_chunk: int = 8192) -> jax.Array:
    """Summed cross-entropy of each row's ``loss_mask`` tokens, float32 ``[B]`` (scoring answers)."""
    hidden = final_hidden(model, batch, mesh)
    head = constrain(lm_head(model.llm), mesh, (None, None))
    losses = token_losses(hidden, head, batch["targets"], chunk=vocab_chunk, dtype=model.llm.runtime.dtype)
    return jnp.sum(jnp.where(batch["loss_mask"], losses, 0.0), axis=-1)
