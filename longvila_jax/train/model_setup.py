"""Building what a run trains: the mesh, the model (preset or weights, RoPE base, LoRA) on that mesh.

``init`` weights are read from a VILA/HF folder (``LongVILA.from_pretrained``,
then placed on the mesh), or from a ``convert hf-to-orbax`` folder or a run's
``export`` folder (restored sharded, straight onto the mesh).  With no
``init`` the model is random, created directly sharded (each parameter's
initializer runs under ``jit`` with its ZeRO-3 output sharding, so no host
holds a full copy).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax.models.config import RuntimeConfig
from longvila_jax.sharding import make_mesh
from longvila_jax.train.config import MeshSection, ModelSection, StageSection
from longvila_jax.train.lora import apply_lora
from longvila_jax.train.shardings import param_shardings

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_mesh(section: MeshSection, devices=None):
    """The four-axis mesh of ``section``; one axis may be -1 (filled with the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(data=section.data, fsdp=section.fsdp, ring=section.ring, ulysses=section.ulysses)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    fixed = 1
    for k, v in sizes.items():
        if v != -1:
            fixed *= v
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh {sizes}: {len(devices)} devices do not divide by the fixed axes' product "
                             f"{fixed}; change the axis sizes")
        sizes[free[0]] = len(devices) // fixed
    return make_mesh(devices=devices, **sizes)


def runtime_config(section: ModelSection) -> RuntimeConfig:
    for key in ("dtype", "param_dtype"):
        if getattr(section, key) not in DTYPES:
            raise ValueError(f"model.{key}={getattr(section, key)!r}; use one of {sorted(DTYPES)}")
    return RuntimeConfig(dtype=DTYPES[section.dtype], param_dtype=DTYPES[section.param_dtype],
                         attn_impl=section.attn_impl, remat=section.remat)


def with_rope_theta(model, theta: float) -> None:
    """Sets the LLM's RoPE base to ``theta`` in place (and in the config written on export)."""
    llm_cfg = model.config.llm
    rope = dict(llm_cfg.rope)
    rope["rope_theta"] = float(theta)
    hf = dict(llm_cfg.hf)
    hf["rope_theta"] = float(theta)
    if isinstance(hf.get("rope_parameters"), dict):
        hf["rope_parameters"] = {**hf["rope_parameters"], "rope_theta": float(theta)}
    new_llm = dataclasses.replace(llm_cfg, rope=tuple(sorted(rope.items())), hf=hf)
    model.config = dataclasses.replace(model.config, llm=new_llm)
    model.llm.config = new_llm
    source = getattr(model, "hf_source", None)
    if source is not None and "llm" in getattr(source, "components", {}):
        part = source.components["llm"]
        spec = json.loads(part.config_text)
        spec["rope_theta"] = float(theta)
        if isinstance(spec.get("rope_parameters"), dict):
            spec["rope_parameters"]["rope_theta"] = float(theta)
        part.config_text = json.dumps(spec, indent=2) + "\n"


def _random_model(config, runtime, mesh, seed: int):
    from longvila_jax.models.longvila import LongVILA

    abstract = nnx.eval_shape(lambda: LongVILA(config, runtime, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    shardings = param_shardings(state, mesh)

    def init():
        return nnx.to_pure_dict(nnx.state(LongVILA(config, runtime, rngs=nnx.Rngs(seed))))

    values = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, values)


def _place(model, mesh):
    """Moves every parameter of ``model`` onto its ZeRO-3 sharding over ``mesh``."""
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh)
    values = jax.device_put(nnx.to_pure_dict(state), shardings)
    placed = nnx.merge(graphdef, values)
    if hasattr(model, "hf_source"):
        placed.hf_source = model.hf_source
    return placed


def load_model(section: ModelSection, mesh, *, preset_config=None):
    """The model of ``section`` with parameters sharded over ``mesh``."""
    from longvila_jax.demo import load_preset

    runtime = runtime_config(section)
    if section.init is None:
        config = preset_config or load_preset(section.preset)
        model = _random_model(config, runtime, mesh, section.seed)
    else:
        path = Path(section.init)
        if (path / "longvila_jax.json").exists():
            from longvila_jax.convert.orbax_io import load_orbax

            model = load_orbax(path, dtype=runtime.dtype, mesh=mesh, attn_impl=runtime.attn_impl,
                               remat=runtime.remat)
            if jnp.dtype(model.runtime.param_dtype) != jnp.dtype(runtime.param_dtype):
                raise ValueError(f"{path} stores {jnp.dtype(model.runtime.param_dtype).name} parameters but "
                                 f"model.param_dtype={section.param_dtype}; set model.param_dtype to match")
        elif (path / "config.json").exists():
            from longvila_jax.models.longvila import LongVILA

            model = _place(LongVILA.from_pretrained(path, dtype=runtime.dtype, param_dtype=runtime.param_dtype,
                                                    attn_impl=runtime.attn_impl, remat=runtime.remat), mesh)
        else:
            raise FileNotFoundError(f"model.init={path}: neither a VILA folder (config.json) nor an Orbax "
                                    f"model folder (longvila_jax.json); convert it with `longvila-jax convert`")
    if section.rope_theta is not None:
        with_rope_theta(model, section.rope_theta)
    return model


def prepare_stage(model, stage: StageSection, mesh, seed: int = 0):
    """Adds LoRA adapters when the stage has them (placed on ``mesh``); returns the model."""
    if not stage.lora:
        return model
    lora = dict(stage.lora)
    unknown = sorted(set(lora) - {"rank", "alpha", "targets"})
    if unknown:
        raise ValueError(f"stage.lora: unknown key(s) {unknown}; use rank, alpha, targets")
    kwargs = {k: lora[k] for k in ("rank", "alpha") if k in lora}
    if "targets" in lora:
        kwargs["targets"] = tuple(lora["targets"])
    kwargs.setdefault("rank", 8)
    kwargs.setdefault("alpha", 2 * kwargs["rank"])
    apply_lora(model, seed=seed, **kwargs)
    return _place(model, mesh)
