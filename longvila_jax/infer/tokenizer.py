"""The checkpoint's Hugging Face tokenizer (``llm/`` of a VILA folder), never with remote code.

``spec`` overrides it: a folder with a Hugging Face tokenizer, or
``toy:llama3`` / ``toy:chatml`` (the locally built tokenizer that the demo
and the tests train with, ``data.toy_tokenizer``).
"""

from __future__ import annotations

from pathlib import Path

from longvila_jax.infer.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def tokenizer_folder(checkpoint) -> Path:
    """``checkpoint/llm`` when it holds tokenizer files, else ``checkpoint``; raises :class:`InputError`."""
    root = Path(checkpoint)
    for folder in (root / "llm", root):
        if any((folder / name).exists() for name in TOKENIZER_FILES):
            return folder
    raise InputError(f"{root}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {root / 'llm'} or {root}; "
                     f"a LongVILA checkpoint keeps its LLM's Hugging Face tokenizer in llm/: copy it there")


def load_tokenizer(checkpoint, spec: str | None = None):
    """``transformers.AutoTokenizer`` from local files only, ``trust_remote_code=False`` (or ``spec``)."""
    from transformers import AutoTokenizer

    if spec and spec.startswith("toy:"):
        from longvila_jax.data.toy_tokenizer import build_toy_tokenizer

        try:
            return build_toy_tokenizer(spec.split(":", 1)[1])
        except ValueError as err:
            raise InputError(f"--tokenizer {spec}: {err}") from None
    folder = tokenizer_folder(spec or checkpoint)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: the tokenizer cannot be loaded ({err}); it must load with "
                         f"transformers.AutoTokenizer without remote code") from None
