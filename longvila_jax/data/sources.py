"""Random-access sources of sample records (grain ``RandomAccessDataSource`` protocol).

* :class:`ManifestSource`: a JSONL (or, with pyarrow installed, Parquet)
  manifest, one sample per line::

      {"video": "clips/a.mp4", "conversations": [{"from": "human", "value": "<video>\\nWhat ...?"},
                                                 {"from": "gpt", "value": "A dog."}], ...}

  ``video`` or ``image`` (a path relative to ``data_root``), or neither (text
  only). Extra keys are kept. JSONL lines are indexed by byte offset, so a
  manifest of millions of lines costs 8 bytes a line in memory.
* :class:`TextSource`: documents for the text-only context-extension stage:
  JSONL lines ``{"text": str}`` (raw) or ``{"input_ids": [int, ...]}``
  (pre-tokenized), ``.txt`` files (one document each), or an in-memory list.

``source[i]`` returns a dict with the record and ``"_where"`` (``file:line``,
for error messages). A line that is not valid JSON returns
``{"_bad_record": message, "_where": ...}``; preparation turns it into a
counted skip, never an exception.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _index_lines(path: Path) -> np.ndarray:
    """Byte offsets ``[n + 1]`` of the non-empty lines of a text file (last entry: file size)."""
    starts = []
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                starts.append(offset)
            offset += len(line)
    ends = np.array(starts + [offset], np.int64)
    return ends


class _JsonLines:
    """Lines of a JSONL file by index, read with ``os.pread`` (thread-safe, picklable)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"manifest {self.path} does not exist; pass the path of a JSONL file")
        self._offsets = _index_lines(self.path)
        self._fd = None
        self._pid = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getstate__(self):
        return {"path": self.path, "_offsets": self._offsets, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def line(self, index: int) -> bytes:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return os.pread(self._file(), end - start, start)

    def record(self, index: int) -> dict:
        where = f"{self.path}:{index + 1}"
        try:
            value = json.loads(self.line(index))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return {"_bad_record": f"not valid JSON ({e})", "_where": where}
        if not isinstance(value, dict):
            return {"_bad_record": f"a record must be a JSON object, got {type(value).__name__}", "_where": where}
        value["_where"] = where
        return value


class _ParquetRows:
    """Rows of a Parquet file by index (needs pyarrow; not a hard dependency)."""

    def __init__(self, path: str | os.PathLike):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                f"reading the Parquet manifest {path} needs pyarrow (pip install pyarrow); or convert it to JSONL"
            ) from e
        self.path = Path(path)
        self._table = pq.read_table(self.path)

    def __len__(self) -> int:
        return self._table.num_rows

    def record(self, index: int) -> dict:
        value = self._table.slice(index, 1).to_pylist()[0]
        value["_where"] = f"{self.path}:row {index}"
        return value


def _open_records(path: str | os.PathLike):
    path = Path(path)
    if path.suffix == ".parquet":
        return _ParquetRows(path)
    return _JsonLines(path)


class ManifestSource:
    """Samples of a manifest: ``len(source)``, ``source[i] -> dict`` (record + ``"_where"``).

    Args:
      manifest: path of a ``.jsonl`` (or ``.parquet``) file.
      data_root: folder that the records' ``video``/``image`` paths are relative to
        (default: the manifest's folder). Absolute paths are used as they are.
    """

    def __init__(self, manifest: str | os.PathLike, data_root: str | os.PathLike | None = None):
        self._rows = _open_records(manifest)
        self.data_root = Path(data_root) if data_root is not None else Path(manifest).parent

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        record = self._rows.record(int(index))
        record["_index"] = int(index)
        for key in ("video", "image"):
            if isinstance(record.get(key), str):
                record[key] = str(self.data_root / record[key])
        return record

    def __repr__(self) -> str:
        return f"ManifestSource({self._rows.path}, {len(self)} samples, root={self.data_root})"


class TextSource:
    """Documents for text-only training: ``source[i] -> {"text": str} | {"input_ids": list[int]}``.

    Args:
      documents: a ``.jsonl`` file (lines with ``text`` or ``input_ids``), a
        ``.parquet`` file (same columns; needs pyarrow), a folder of ``.txt``
        files, a list of ``.txt`` paths, or an in-memory list of strings / id lists.
    """

    def __init__(self, documents: str | os.PathLike | Sequence):
        self._rows = None
        self._files: list[Path] | None = None
        self._memory: list | None = None
        if isinstance(documents, (str, os.PathLike)):
            path = Path(documents)
            if path.is_dir():
                self._files = sorted(path.glob("*.txt"))
                if not self._files:
                    raise FileNotFoundError(f"text folder {path} holds no .txt file")
            elif path.suffix == ".txt":
                self._files = [path]
            else:
                self._rows = _open_records(path)
        elif documents and isinstance(documents[0], (str, os.PathLike)) and str(documents[0]).endswith(".txt"):
            self._files = [Path(p) for p in documents]
        else:
            self._memory = list(documents)

    def __len__(self) -> int:
        if self._rows is not None:
            return len(self._rows)
        return len(self._files) if self._files is not None else len(self._memory)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self._rows is not None:
            record = self._rows.record(index)
        elif self._files is not None:
            path = self._files[index]
            try:
                record = {"text": path.read_text(encoding="utf-8"), "_where": str(path)}
            except FileNotFoundError:
                record = {"_missing": str(path), "_where": str(path)}
            except UnicodeDecodeError as e:
                record = {"_bad_record": f"not UTF-8 text ({e})", "_where": str(path)}
        else:
            doc = self._memory[index]
            key = "text" if isinstance(doc, str) else "input_ids"
            record = {key: doc if isinstance(doc, str) else [int(t) for t in doc], "_where": f"document {index}"}
        record["_index"] = index
        return record
