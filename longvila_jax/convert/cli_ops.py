"""The ``longvila-jax convert`` operations: whole folders, with progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp

from longvila_jax.convert.errors import CheckpointError
from longvila_jax.convert.orbax_io import load_orbax, save_orbax

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def is_vila_folder(folder: Path) -> bool:
    return (folder / "llm").is_dir() and (folder / "vision_tower").is_dir()


def checkpoint_dtype(config_path: Path):
    """The dtype the checkpoint was saved in (``dtype`` or ``torch_dtype``), float32 if unstated."""
    cfg = json.loads(config_path.read_text()) if config_path.exists() else {}
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return DTYPES.get(name, jnp.float32)


def load_hf(src, dtype=None):
    """A LongVILA (VILA layout) or CausalLM (plain HF folder) from ``src``."""
    from longvila_jax import CausalLM, LongVILA

    folder = Path(src)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    if is_vila_folder(folder):
        dtype = DTYPES[dtype] if dtype else checkpoint_dtype(folder / "llm" / "config.json")
        return LongVILA.from_pretrained(folder, dtype=dtype)
    dtype = DTYPES[dtype] if dtype else checkpoint_dtype(folder / "config.json")
    return CausalLM.from_pretrained(folder, dtype=dtype)


def hf_to_orbax(src, dst, dtype=None) -> None:
    model = load_hf(src, dtype)
    save_orbax(model, dst)
    print(f"wrote {type(model).__name__} ({_count(model):,} parameters) to {dst}")


def orbax_to_hf(src, dst) -> None:
    out = Path(dst)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose a new folder or remove it first")
    model = load_orbax(src)
    model.save_pretrained(out)
    print(f"wrote {type(model).__name__} ({_count(model):,} parameters) to {out}")


def _count(model) -> int:
    from longvila_jax.convert.component import param_variables

    return sum(int(v.get_value().size) for v in param_variables(model).values())
