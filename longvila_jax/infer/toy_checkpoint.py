"""A tiny random LongVILA checkpoint with a locally built tokenizer (tests, examples; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path


def write_toy_checkpoint(path, *, seed: int = 0, style: str | None = "llama3") -> Path:
    """Writes ``configs/model/tiny.json`` with random weights in the VILA layout, and the toy
    byte-level BPE tokenizer (``data.toy_tokenizer``, ``style`` chat template) in ``llm/``
    (none when ``style`` is None, as the training demo's exports)."""
    from flax import nnx

    from longvila_jax.data.toy_tokenizer import build_toy_tokenizer
    from longvila_jax.demo import load_preset
    from longvila_jax.models.longvila import LongVILA

    path = Path(path)
    config = load_preset("tiny")
    LongVILA(config, rngs=nnx.Rngs(seed)).save_pretrained(path)
    if style is not None:
        build_toy_tokenizer(style, vocab_size=config.llm.vocab_size).save_pretrained(path / "llm")
    return path
