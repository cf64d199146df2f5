"""Load and save one Hugging Face component folder (an LLM, a SigLIP tower, a projector).

Loading streams tensor by tensor: a stacked ``[layers, ...]`` parameter is
filled row by row in host memory and handed to JAX before the next parameter
is read, so host memory holds the model once plus one parameter.  Tensors the
JAX model does not use (SigLIP's head, old ``rotary_emb.inv_freq`` buffers)
are kept verbatim, with every file's layout, dtypes and configs, so that
saving reproduces the folder bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from longvila_jax.convert import safetensors_io as sio
from longvila_jax.convert.errors import CheckpointError
from longvila_jax.convert.rules import Rule
from longvila_jax.sharding import param_sharding

WEIGHT_SUFFIXES = (".safetensors",) + sio.PICKLE_SUFFIXES
AUX_FILE_LIMIT = 256 * 2**20


@dataclass(eq=False)
class ComponentSource:
    """What a component folder held besides the model's parameters, to write it back exactly."""

    config_text: str
    tensor_dtypes: dict[str, str] = field(default_factory=dict)      # HF key -> safetensors dtype name
    file_order: dict[str, list[str]] = field(default_factory=dict)   # shard file -> keys in order
    file_metadata: dict[str, dict | None] = field(default_factory=dict)
    index_text: str | None = None
    passthrough: dict[str, np.ndarray] = field(default_factory=dict)
    aux_files: dict[str, bytes] = field(default_factory=dict)


def param_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """Dotted path -> Param of every parameter under ``module``."""
    return {".".join(map(str, path)): var for path, var in nnx.iter_graph(module) if isinstance(var, nnx.Param)}


def read_config(folder: Path) -> tuple[dict, str]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: missing; every checkpoint folder needs its config.json")
    text = path.read_text()
    try:
        return json.loads(text), text
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _aux_files(folder: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and p.name not in ("config.json", sio.INDEX_NAME):
            if p.stat().st_size <= AUX_FILE_LIMIT:
                out[p.name] = p.read_bytes()
    return out


def load_component(folder, module: nnx.Module, rules: list[Rule], config_text: str, *, dtype,
                   mesh=None, desc: str = "") -> ComponentSource:
    """Fills the (abstract) parameters of ``module`` from ``folder``; returns what is needed to save it back."""
    folder = Path(folder)
    tensors = sio.open_folder(folder)
    variables = param_variables(module)
    source = ComponentSource(config_text=config_text, file_order=tensors.file_order,
                             file_metadata=tensors.file_metadata, aux_files=_aux_files(folder))
    if tensors.index_metadata is not None:
        source.index_text = (folder / sio.INDEX_NAME).read_text()
    used: set[str] = set()
    for rule in tqdm(rules, desc=desc or folder.name, unit="param", leave=False):
        var = variables.pop(rule.jax)
        shape = tuple(var.get_value().shape)
        keys = [rule.hf.format(i=i) for i in range(shape[0])] if rule.per_layer else [rule.hf]
        row_shape = shape[1:] if rule.per_layer else shape
        host = np.empty(shape, dtype=np.dtype(dtype))
        for i, key in enumerate(keys):
            tensor = tensors.read(key)
            expected = rule.layout.hf_shape(row_shape)
            if tuple(tensor.shape) != expected:
                raise CheckpointError(
                    f"{tensors.entries[key].file}: tensor {key!r} has shape {tuple(tensor.shape)}, but "
                    f"{folder / 'config.json'} implies {expected}; the weights and the config do not match"
                )
            row = rule.layout.to_jax(tensor).astype(host.dtype)
            if rule.per_layer:
                host[i] = row
            else:
                host[...] = row
            source.tensor_dtypes[key] = tensors.entries[key].dtype
            used.add(key)
        logical = var.get_metadata("logical_axes")
        var.set_value(jax.device_put(host, param_sharding(shape, logical, mesh)) if mesh is not None
                      else jnp.asarray(host))
        del host
    if variables:
        raise CheckpointError(f"{folder}: internal: no conversion rule for parameters {sorted(variables)}")
    for key in tensors.keys():
        if key not in used:
            source.passthrough[key] = tensors.read(key)
            source.tensor_dtypes[key] = tensors.entries[key].dtype
    return source


def fresh_source(config: dict, rules: list[Rule], module: nnx.Module) -> ComponentSource:
    """The source of a model made in JAX: one ``model.safetensors``, tensors in the parameter dtype."""
    variables = param_variables(module)
    order, dtypes = [], {}
    for rule in rules:
        var = variables[rule.jax]
        count = var.get_value().shape[0] if rule.per_layer else 1
        name = sio.DTYPE_NAMES[np.dtype(var.get_value().dtype)]
        for i in range(count):
            key = rule.hf.format(i=i)
            order.append(key)
            dtypes[key] = name
    return ComponentSource(config_text=json.dumps(config, indent=2, sort_keys=True) + "\n",
                           tensor_dtypes=dtypes, file_order={sio.SINGLE_NAME: order},
                           file_metadata={sio.SINGLE_NAME: {"format": "pt"}})


def save_component(folder, module: nnx.Module, rules: list[Rule], source: ComponentSource, *, desc: str = "") -> None:
    """Writes ``module``'s parameters to ``folder`` in the layout recorded by ``source``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variables = param_variables(module)
    producers = {}
    for rule in rules:
        var = variables[rule.jax]
        if rule.per_layer:
            for i in range(var.get_value().shape[0]):
                producers[rule.hf.format(i=i)] = (var, rule.layout, i)
        else:
            producers[rule.hf] = (var, rule.layout, None)

    def tensor(key: str) -> np.ndarray:
        if key in source.passthrough:
            return source.passthrough[key]
        if key not in producers:
            raise CheckpointError(f"{folder}: the recorded layout names tensor {key!r}, which the model does not have")
        var, layout, row = producers[key]
        value = var.get_value() if row is None else var.get_value()[row]
        array = layout.to_hf(np.asarray(jax.device_get(value)))
        return array.astype(sio.DTYPES[source.tensor_dtypes[key]])

    for file_name, keys in tqdm(source.file_order.items(), desc=desc or folder.name, unit="file", leave=False):
        sio.write_file(folder / file_name, {key: tensor(key) for key in keys}, source.file_metadata.get(file_name))
    if source.index_text is not None:
        (folder / sio.INDEX_NAME).write_text(source.index_text)
    (folder / "config.json").write_text(source.config_text)
    for name, data in source.aux_files.items():
        (folder / name).write_bytes(data)
