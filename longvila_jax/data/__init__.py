"""Video-text data pipeline on grain (host side of MM-SP).

One idea per module: ``sources`` (manifests, documents), ``video`` (frame
sampling, PyAV decode with seeking, resize, normalize), ``text`` (chat
template, placeholders, assistant labels), ``prepare`` (record -> samples or
a counted skip), ``packing`` (rows of a token budget, natural order),
``layout`` (zigzag device order, frames and frame plan of a step),
``sharding`` (which share a process reads), ``device`` (a step as global
arrays on the mesh), ``pipeline`` (the grain
pipeline and its exact resume), ``checkpoint`` (Orbax), ``errors`` (bad
input reasons and counts), ``synthetic`` (needle videos, documents),
``toy_tokenizer`` (a local tokenizer for tests and the demo).
"""

from longvila_jax.data.checkpoint import data_checkpoint_handler, load_state, restore_args, save_args, save_state
from longvila_jax.data.device import batch_shardings, put_batch
from longvila_jax.data.errors import REASONS, BadSampleError, Skip, SkipCounter
from longvila_jax.data.layout import device_order_row, make_batch
from longvila_jax.data.packing import FirstFitRows, pack_row
from longvila_jax.data.pipeline import DataConfig, build_dataset
from longvila_jax.data.sharding import (Shard, frame_multiple_from_mesh, shard_for_process, shard_from_mesh,
                                       shard_from_process_grid)
from longvila_jax.data.sources import ManifestSource, TextSource
from longvila_jax.data.text import ConversationTokenizer, resolve_image_token_id, tokenize_document
from longvila_jax.data.video import FrameSpec, decode_frames, load_image, load_video, sample_indices

__all__ = [
    "BadSampleError", "ConversationTokenizer", "batch_shardings", "frame_multiple_from_mesh", "put_batch", "DataConfig", "FirstFitRows", "FrameSpec", "ManifestSource",
    "REASONS", "Shard", "Skip", "SkipCounter", "TextSource", "build_dataset", "data_checkpoint_handler",
    "decode_frames", "device_order_row", "load_image", "load_state", "load_video", "make_batch", "pack_row",
    "resolve_image_token_id", "restore_args", "sample_indices", "save_args", "save_state", "shard_for_process",
    "shard_from_mesh", "shard_from_process_grid", "tokenize_document",
]
