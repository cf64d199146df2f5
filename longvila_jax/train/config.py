"""Training configurations: JSON files with inheritance and ``key=value`` overrides.

A config is a JSON object of sections (see :class:`TrainConfig`).  ``"base"``
names another config file (relative to this one) whose values this one
overrides, section by section (dicts merge recursively; lists and scalars
replace).  Command-line overrides ``a.b=value`` apply last; ``value`` is
parsed as JSON when it parses (``3``, ``1e-4``, ``true``, ``null``,
``[1,2]``), else taken as a string.  Unknown keys are errors that name the
key and the known ones.

Layout: ``configs/stages/<stage>.json`` hold what a stage is (what trains,
LoRA, optimizer, data kind); ``configs/train/<model>/<stage>.json`` take a
stage as ``base`` and add the model preset, mesh, lengths and steps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from longvila_jax.train.optimizer import OptimConfig

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """``preset``: ``configs/model/<preset>.json``; ``init``: weights to start from (a VILA/HF folder,
    a ``convert hf-to-orbax`` folder, or a training run's ``export`` folder; None: random);
    ``rope_theta``: overrides the LLM's RoPE base (context extension)."""

    preset: str = "tiny"
    init: str | None = None
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"
    attn_impl: str = "auto"
    rope_theta: float | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Mesh axis sizes; one of them may be -1 (all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    ring: int = 1
    ulysses: int = 1


@dataclasses.dataclass(frozen=True)
class DataSection:
    """``kind``: ``needle`` (synthetic needle videos written to ``root``), ``manifest`` (a video/image
    JSONL manifest), ``text`` (documents: ``documents`` path) or ``synthetic_text`` (pass-key filler
    documents).  ``seq_len``: row length (``seq_schedule``: ``[[from_step, seq_len], ...]`` for
    progressive lengths); ``batch_size``: rows per step (all processes); ``tokenizer``: a folder with a
    Hugging Face tokenizer, or ``toy:llama3`` / ``toy:chatml`` (the local toy tokenizer)."""

    kind: str = "needle"
    root: str | None = None
    manifest: str | None = None
    documents: str | None = None
    tokenizer: str = "toy:llama3"
    seq_len: int = 512
    seq_schedule: tuple = ()
    batch_size: int = 2
    num_frames: int = 8
    max_frames_per_row: int | None = None
    frames_per_batch: int | None = None
    num_videos: int = 64
    num_documents: int = 64
    doc_words: tuple = (100, 400)
    needle_kinds: tuple = ("digit", "colour", "shape")
    seed: int = 0
    num_threads: int = 2
    prefetch_batches: int = 0


@dataclasses.dataclass(frozen=True)
class StageSection:
    """What trains: ``trainable`` glob patterns (``train.freeze``); ``lora``: None or
    ``{"rank", "alpha", "targets"}``; ``merge_lora_on_export``."""

    name: str = "custom"
    trainable: tuple = ("*",)
    lora: dict | None = None
    merge_lora_on_export: bool = True


@dataclasses.dataclass(frozen=True)
class RunSection:
    """``steps``: optimizer steps; ``grad_accum``: micro-batches per step; ``vocab_chunk``: columns per
    loss chunk; ``out``: run folder (metrics, checkpoints, export)."""

    steps: int = 10
    grad_accum: int = 1
    vocab_chunk: int = 8192
    log_every: int = 1
    out: str = "runs/train"
    export: bool = True
    peak_tflops: float | None = None
    progress: bool = True
    compilation_cache: str | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """``every``: steps between saves (0: only at the end and on SIGTERM); ``keep``: last k kept;
    ``enabled``: false for benchmarks (no save, no resume)."""

    enabled: bool = True
    every: int = 0
    keep: int = 2
    async_save: bool = True
    resume: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    model: ModelSection = ModelSection()
    mesh: MeshSection = MeshSection()
    data: DataSection = DataSection()
    stage: StageSection = StageSection()
    optim: OptimConfig = OptimConfig()
    run: RunSection = RunSection()
    checkpoint: CheckpointSection = CheckpointSection()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_dict(path: str | Path, _seen=()) -> dict:
    """The JSON of ``path`` with its ``base`` chain merged in (``description`` keys dropped)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: 'base' chain loops back to itself")
    if not path.exists():
        raise FileNotFoundError(f"training config {path} does not exist; configs live in {CONFIG_ROOT}")
    spec = json.loads(path.read_text())
    spec.pop("description", None)
    base = spec.pop("base", None)
    if base is not None:
        spec = _merge(read_config_dict(path.parent / base, _seen + (path,)), spec)
    return spec


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(spec: dict, overrides) -> dict:
    """``["optim.lr=1e-4", "run.steps=5"]`` applied to a config dict (a new dict)."""
    out = copy.deepcopy(spec)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. run.steps=5)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return out


def _build(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(spec: dict, where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a merged dict; errors name the bad key."""
    kwargs = {}
    for key, value in spec.items():
        if key == "name":
            kwargs[key] = str(value)
            continue
        if key not in SECTIONS:
            raise ValueError(f"{where}: unknown section {key!r}; sections are {sorted(SECTIONS)} and 'name'")
        section_cls = {"model": ModelSection, "mesh": MeshSection, "data": DataSection, "stage": StageSection,
                       "optim": OptimConfig, "run": RunSection, "checkpoint": CheckpointSection}[key]
        kwargs[key] = _build(section_cls, value or {}, f"{where} [{key}]")
    return TrainConfig(**kwargs)


def load_config(path: str | Path, overrides=()) -> TrainConfig:
    """Reads ``path`` (with its ``base`` chain) and applies ``key=value`` overrides."""
    spec = apply_overrides(read_config_dict(path), overrides)
    return config_from_dict(spec, where=str(path))


def resolve_config_path(name: str | Path) -> Path:
    """``name`` as a path, or ``<model>/<stage>`` under ``configs/train`` (``.json`` optional)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_ROOT / "train" / name, CONFIG_ROOT / "train" / f"{name}.json"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"training config {name!r} not found (as a path or under {CONFIG_ROOT / 'train'}); "
                            f"e.g. configs/train/tiny/short_sft.json")
