"""Streaming safetensors: read one tensor at a time, write shards byte-exactly.

A small reader/writer of the safetensors format (8-byte little-endian header
length, a JSON header, raw little-endian tensor bytes), so that bfloat16 and
every other dtype round-trips bit for bit without PyTorch, and an 8B
checkpoint never sits in memory twice.  Pickled ``.bin`` weights are refused.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

from longvila_jax.convert.errors import CheckpointError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class TensorEntry:
    """Where one tensor lives: file, dtype name, shape, byte range of its data."""

    file: Path
    dtype: str
    shape: tuple
    begin: int
    end: int


@dataclass
class SafetensorsFolder:
    """All tensors of a folder (sharded with an index, or one ``model.safetensors``)."""

    folder: Path
    entries: dict[str, TensorEntry]
    file_metadata: dict[str, dict] = field(default_factory=dict)   # file name -> header __metadata__
    file_order: dict[str, list[str]] = field(default_factory=dict)  # file name -> keys in header order
    index_metadata: dict | None = None                              # the index's "metadata", None if unsharded

    def keys(self):
        return self.entries.keys()

    def read(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a NumPy array of its stored dtype (reads only its bytes)."""
        if key not in self.entries:
            raise CheckpointError(f"{self.folder}: tensor {key!r} is missing from the safetensors files")
        e = self.entries[key]
        count = int(np.prod(e.shape, dtype=np.int64))
        with open(e.file, "rb") as fh:
            fh.seek(e.begin)
            data = np.fromfile(fh, dtype=DTYPES[e.dtype], count=count)
        if data.size != count:
            raise CheckpointError(f"{e.file}: tensor {key!r} is truncated ({data.size} of {count} elements)")
        return data.reshape(e.shape)


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", raw)
            if length > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (header length {length})")
            header = json.loads(fh.read(length))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({err})") from err
    return header, 8 + length


def refuse_pickles(folder: Path) -> None:
    """Raises if the folder holds only pickled weights: loading them would run code from the checkpoint."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder}: holds pickled PyTorch weights ({', '.join(pickles[:3])}) and no safetensors. "
            "Unpickling can run arbitrary code, so longvila-jax never loads them; convert them to safetensors "
            "in a trusted environment first (e.g. transformers' save_pretrained(safe_serialization=True))."
        )


def open_folder(folder) -> SafetensorsFolder:
    """Indexes the safetensors of ``folder`` without reading any tensor data."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    index_path = folder / INDEX_NAME
    if index_path.exists():
        index = json.loads(index_path.read_text())
        files = sorted(set(index["weight_map"].values()))
        index_metadata = index.get("metadata", {})
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        index_metadata = None
        if not files:
            refuse_pickles(folder)
            raise CheckpointError(f"{folder}: no {INDEX_NAME} and no *.safetensors file; is this a model folder?")
    result = SafetensorsFolder(folder, {}, index_metadata=index_metadata)
    for name in files:
        if not (folder / name).exists():
            raise CheckpointError(f"{index_path}: names shard {name!r}, which is missing from {folder}")
        _add_file(result, folder / name)
    return result


def _add_file(result: SafetensorsFolder, path: Path) -> None:
    """Adds the tensors of one safetensors file to ``result`` (header only; checks dtypes and sizes)."""
    header, data_start = _read_header(path)
    result.file_metadata[path.name] = header.pop("__metadata__", None)
    result.file_order[path.name] = list(header)
    size = path.stat().st_size
    for key, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {key!r} is truncated (file ends at byte {size})")
        result.entries[key] = TensorEntry(path, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end)


def open_folder_file(path) -> SafetensorsFolder:
    """Indexes a single safetensors file (any name)."""
    path = Path(path)
    result = SafetensorsFolder(path.parent, {})
    _add_file(result, path)
    return result


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> int:
    """Writes ``tensors`` (in the given order) to one safetensors file; returns the data size in bytes."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for key, array in tensors.items():
        nbytes = array.nbytes
        header[key] = {"dtype": DTYPE_NAMES[np.dtype(array.dtype)], "shape": list(array.shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for array in tensors.values():
            fh.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)
    return offset


def write_index(folder: Path, weight_map: dict[str, str], metadata: dict) -> None:
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=2) + "\n")
