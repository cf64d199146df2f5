"""Video multiple-choice questions in the VideoMME format, their videos and subtitles.

Questions: a JSON file (a list of records, or ``{"questions": [...]}``), a
JSONL file, or a Parquet file (needs ``pyarrow``).  A record has
``video_id`` (or VideoMME's ``videoID``, preferred for file names),
``duration`` (duration class: short / medium / long), ``question``,
``options`` (a list of ``"A. ..."`` strings, plain texts, or a letter->text
dict), ``answer`` (a letter) and optionally ``question_id``.  Videos are
``<videos>/<id>.<ext>``; subtitles ``<subtitles>/<id>.srt`` (optional).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from longvila_jax.eval.choice import option_texts
from longvila_jax.infer.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: str
    video_id: str
    duration: str
    question: str
    options: dict
    answer: str


def _records(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(f"questions {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"questions {path}: reading Parquet needs pyarrow (pip install pyarrow), or convert "
                             f"the file to JSON") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text()
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"questions {path}: not valid JSON ({err})") from None
    if isinstance(data, dict):
        data = data.get("questions", data.get("data"))
    if not isinstance(data, list):
        raise InputError(f"questions {path}: expected a list of question records (or {{\"questions\": [...]}})")
    return data


def load_questions(path) -> list[Question]:
    """Reads and checks every record; raises :class:`InputError` naming the first bad one."""
    path = Path(path)
    out = []
    for i, record in enumerate(_records(path)):
        video = record.get("videoID") or record.get("video_id")
        missing = [k for k, v in (("video_id", video), ("question", record.get("question")),
                                  ("options", record.get("options")), ("answer", record.get("answer"))) if not v]
        if missing:
            raise InputError(f"questions {path}: record {i} lacks {', '.join(missing)}")
        options = option_texts(list(record["options"]) if not isinstance(record["options"], dict)
                               else record["options"])
        answer = str(record["answer"]).strip().upper()[:1]
        if answer not in options:
            raise InputError(f"questions {path}: record {i}: answer {record['answer']!r} is not one of the option "
                             f"letters {''.join(options)}")
        out.append(Question(str(record.get("question_id", i)), str(video), str(record.get("duration", "all")),
                            str(record["question"]), options, answer))
    if not out:
        raise InputError(f"questions {path}: holds no question")
    return out


def find_video(folder, video_id: str) -> Path:
    """``folder/<video_id>.<ext>``; raises :class:`InputError` when there is none."""
    folder = Path(folder)
    for ext in VIDEO_EXTENSIONS:
        candidate = folder / f"{video_id}{ext}"
        if candidate.exists():
            return candidate
    raise InputError(f"video {video_id}: no file {folder}/{video_id}.{{{','.join(e[1:] for e in VIDEO_EXTENSIONS)}}}")


def read_subtitles(folder, video_id: str) -> str | None:
    """The text lines of ``folder/<video_id>.srt`` joined by newlines (no indices, no times), or None."""
    if folder is None:
        return None
    path = Path(folder) / f"{video_id}.srt"
    if not path.exists():
        return None
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.isdigit() or "-->" in line:
            continue
        lines.append(re.sub(r"<[^>]+>", "", line))
    return "\n".join(lines) or None
