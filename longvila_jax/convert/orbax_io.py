"""Converted models on disk with Orbax: parameters sharded over a mesh, plus the HF layout to write back.

Folder layout::

    DST/longvila_jax.json        kind ("longvila" | "causal_lm") and format version
    DST/params/                  Orbax checkpoint of the parameters (dotted path -> array)
    DST/hf_skeleton/             the HF folder's configs and small files, without weights
    DST/hf_layout.json           per component: tensor dtypes, shard files and key order, index text
    DST/passthrough/NAME.safetensors   tensors the JAX model does not use, kept verbatim
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from longvila_jax.convert import safetensors_io as sio
from longvila_jax.convert.component import ComponentSource, param_variables
from longvila_jax.convert.errors import CheckpointError
from longvila_jax.models.config import RuntimeConfig
from longvila_jax.processes import barrier
from longvila_jax.sharding import param_sharding

FORMAT = 1
MARKER = "longvila_jax.json"


def _components(model) -> tuple[str, dict[str, ComponentSource]]:
    from longvila_jax.convert.component import fresh_source
    from longvila_jax.convert.rules import llm_rules
    from longvila_jax.convert.vila import fresh_vila_source
    from longvila_jax.models.longvila import LongVILA

    if isinstance(model, LongVILA):
        source = getattr(model, "hf_source", None) or fresh_vila_source(model)
        return "longvila", source
    source = getattr(model, "hf_source", None) or fresh_source(model.config.hf, llm_rules(model.config), model)
    return "causal_lm", source


def _write_component_skeleton(folder: Path, source: ComponentSource) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(source.config_text)
    for name, data in source.aux_files.items():
        (folder / name).write_bytes(data)
    return {"tensor_dtypes": source.tensor_dtypes, "file_order": source.file_order,
            "file_metadata": source.file_metadata, "index_text": source.index_text}


def save_orbax(model, path) -> None:
    """Saves ``model`` (LongVILA or CausalLM, possibly sharded) and its HF layout to ``path``.

    Multi-process: every process calls it (the parameter save is collective);
    the side files are written by process 0 only, on a filesystem all share.
    """
    dst = Path(path)
    if dst.exists() and any(dst.iterdir()):
        raise CheckpointError(f"{dst}: exists and is not empty; choose a new folder or remove it first")
    barrier("save_orbax:checked")  # every process has looked before process 0 writes
    kind = _write_side_files(model, dst) if jax.process_index() == 0 else None
    params = {key: var.get_value() for key, var in param_variables(model).items()}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((dst / "params").absolute(), params)
    if jax.process_index() == 0:  # the marker last: a folder with it is complete
        (dst / MARKER).write_text(json.dumps({"kind": kind, "format": FORMAT,
                                              "param_dtype": jax.numpy.dtype(model.runtime.param_dtype).name}))
    barrier("save_orbax:done")


def _write_side_files(model, dst: Path) -> str:
    """Writes the HF skeleton, layout and passthrough tensors of ``model`` under ``dst``; returns its kind."""
    dst.mkdir(parents=True, exist_ok=True)
    kind, source = _components(model)
    skeleton, layout = dst / "hf_skeleton", {}
    passthrough = dst / "passthrough"
    passthrough.mkdir()
    if kind == "longvila":
        skeleton.mkdir()
        (skeleton / "config.json").write_text(source.config_text)
        for name, data in source.aux_files.items():
            (skeleton / name).write_bytes(data)
        parts = source.components
        layout["vision_prefix"] = source.vision_prefix
    else:
        parts = {"": source}
    for name, part in parts.items():
        layout[name or "model"] = _write_component_skeleton(skeleton / name if name else skeleton, part)
        sio.write_file(passthrough / f"{name or 'model'}.safetensors", dict(part.passthrough))
    (dst / "hf_layout.json").write_text(json.dumps(layout, indent=1))
    return kind


def _restore_source(dst: Path, layout: dict, name: str, folder: Path) -> ComponentSource:
    entry = layout[name]
    aux = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "config.json"}
    stored = sio.open_folder_file(dst / "passthrough" / f"{name}.safetensors")
    return ComponentSource(config_text=(folder / "config.json").read_text(), tensor_dtypes=entry["tensor_dtypes"],
                           file_order=entry["file_order"], file_metadata=entry["file_metadata"],
                           index_text=entry["index_text"], aux_files=aux,
                           passthrough={key: stored.read(key) for key in stored.keys()})


def load_orbax(path, *, dtype=None, mesh=None, **runtime_options):
    """Restores a model saved by ``save_orbax``; parameters sharded over ``mesh`` when given."""
    dst = Path(path)
    if not (dst / MARKER).exists():
        raise CheckpointError(f"{dst / MARKER}: missing; {dst} is not a longvila-jax Orbax checkpoint "
                              "(write one with `longvila-jax convert hf-to-orbax`)")
    marker = json.loads((dst / MARKER).read_text())
    if marker.get("format") != FORMAT:
        raise CheckpointError(f"{dst / MARKER}: format {marker.get('format')} is not {FORMAT}")
    param_dtype = jax.numpy.dtype(marker["param_dtype"])
    runtime = RuntimeConfig(dtype=dtype or param_dtype, param_dtype=param_dtype, **runtime_options)
    layout = json.loads((dst / "hf_layout.json").read_text())
    skeleton = dst / "hf_skeleton"
    if marker["kind"] == "longvila":
        from longvila_jax.convert.vila import COMPONENTS, VILASource, read_vila_config
        from longvila_jax.models.longvila import LongVILA

        config, _, top_text = read_vila_config(skeleton)
        model = nnx.eval_shape(lambda: LongVILA(config, runtime, rngs=nnx.Rngs(0)))
        source = VILASource(config_text=top_text, vision_prefix=layout["vision_prefix"], aux_files={
            p.name: p.read_bytes() for p in sorted(skeleton.iterdir()) if p.is_file() and p.name != "config.json"})
        for name in COMPONENTS:
            source.components[name] = _restore_source(dst, layout, name, skeleton / name)
    else:
        from longvila_jax.convert.hf_llm import llm_config
        from longvila_jax.models.causal_lm import CausalLM

        cfg, _ = llm_config(skeleton)
        model = nnx.eval_shape(lambda: CausalLM(cfg, runtime, nnx.Rngs(0)))
        source = _restore_source(dst, layout, "model", skeleton)
    variables = param_variables(model)
    target = {}
    for key, var in variables.items():
        value = var.get_value()
        sharding = (param_sharding(value.shape, var.get_metadata("logical_axes"), mesh) if mesh is not None
                    else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        target[key] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore((dst / "params").absolute(), target)
    for key, var in variables.items():
        var.set_value(restored[key])
    model.hf_source = source
    return model
