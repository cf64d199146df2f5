"""The VILA checkpoint layout <-> ``LongVILA``.

A VILA folder holds a top ``config.json`` (``mm_vision_select_layer``,
``llm_cfg``, ``vision_tower_cfg``, ``mm_projector_cfg``, ...) and three
component folders: ``llm/`` (a Llama or Qwen2 causal LM), ``vision_tower/``
(a SigLIP vision model) and ``mm_projector/`` (``mm_projector_type`` and
``model.safetensors``).  Component configs are read from their folders, or
from the top config's ``*_cfg`` dictionaries when a folder has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flax import nnx

from longvila_jax.convert.component import (ComponentSource, fresh_source, load_component, read_config,
                                            save_component)
from longvila_jax.convert.errors import CheckpointError
from longvila_jax.convert import safetensors_io as sio
from longvila_jax.convert.rules import VISION_PREFIX, llm_rules, projector_rules, vision_prefix, vision_rules
from longvila_jax.models.config import (LEGACY_IMAGE_TOKEN_ID, ConfigError, LLMConfig, LongVILAConfig,
                                        ProjectorConfig, RuntimeConfig, VisionConfig)

COMPONENTS = ("llm", "vision_tower", "mm_projector")
IMAGE_TOKEN = "<image>"


@dataclass(eq=False)
class VILASource:
    """The top config text and files, and each component's source."""

    config_text: str
    aux_files: dict[str, bytes] = field(default_factory=dict)
    components: dict[str, ComponentSource] = field(default_factory=dict)
    vision_prefix: str = VISION_PREFIX


def _component_config(top: Path, top_cfg: dict, name: str) -> tuple[dict, str]:
    folder = top / name
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing; a VILA checkpoint holds the folders {', '.join(COMPONENTS)}")
    if (folder / "config.json").exists():
        return read_config(folder)
    inline = top_cfg.get(f"{name}_cfg")
    if isinstance(inline, dict):
        return inline, json.dumps(inline, indent=2) + "\n"
    raise CheckpointError(f"{folder / 'config.json'}: missing, and {top / 'config.json'} has no {name}_cfg dictionary")


def tokenizer_image_token_id(folder: Path) -> int | None:
    """The id of ``<image>`` in the tokenizer files of ``folder`` (JSON only, no code), or None."""
    tokenizer = folder / "tokenizer.json"
    if tokenizer.exists():
        data = json.loads(tokenizer.read_text())
        for token in data.get("added_tokens", []):
            if token.get("content") == IMAGE_TOKEN:
                return int(token["id"])
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and IMAGE_TOKEN in vocab:
            return int(vocab[IMAGE_TOKEN])
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.exists():
        for token_id, token in json.loads(tok_cfg.read_text()).get("added_tokens_decoder", {}).items():
            if token.get("content") == IMAGE_TOKEN:
                return int(token_id)
    return None


def read_vila_config(path, image_token_id: int | None = None) -> tuple[LongVILAConfig, dict[str, str], str]:
    """The model config of a VILA folder, the component config texts and the top config text."""
    top = Path(path)
    top_cfg, top_text = read_config(top)
    raw, texts = {}, {}
    for name in COMPONENTS:
        raw[name], texts[name] = _component_config(top, top_cfg, name)
    try:
        llm = LLMConfig.from_hf(raw["llm"], where=str(top / "llm" / "config.json"))
        vision = VisionConfig.from_hf(raw["vision_tower"], select_layer=top_cfg.get("mm_vision_select_layer", -2),
                                      where=str(top / "vision_tower" / "config.json"))
        ptype = raw["mm_projector"].get("mm_projector_type", top_cfg.get("mm_projector_type"))
        if ptype is None:
            raise ConfigError(f"{top / 'mm_projector' / 'config.json'}: key 'mm_projector_type' is missing")
        projector = ProjectorConfig(ptype, top_cfg.get("mm_hidden_size", vision.hidden_size), llm.hidden_size,
                                    hf=raw["mm_projector"])
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    if image_token_id is None:
        image_token_id = top_cfg.get("image_token_id")
    if image_token_id is None:
        image_token_id = tokenizer_image_token_id(top / "llm")
    if image_token_id is None:
        image_token_id = LEGACY_IMAGE_TOKEN_ID
    return LongVILAConfig(llm, vision, projector, int(image_token_id), hf=top_cfg), texts, top_text


def component_rules(config: LongVILAConfig, prefix: str = VISION_PREFIX) -> dict[str, list]:
    return {"llm": llm_rules(config.llm), "vision_tower": vision_rules(config.vision, prefix),
            "mm_projector": projector_rules(config.projector)}


def component_modules(model) -> dict:
    return {"llm": model.llm, "vision_tower": model.vision_tower, "mm_projector": model.mm_projector}


def load_longvila(path, runtime: RuntimeConfig, mesh=None, image_token_id: int | None = None):
    """A ``LongVILA`` with the weights of the VILA folder ``path``."""
    from longvila_jax.models.longvila import LongVILA

    top = Path(path)
    config, texts, top_text = read_vila_config(top, image_token_id)
    model = nnx.eval_shape(lambda: LongVILA(config, runtime, rngs=nnx.Rngs(0)))
    source = VILASource(config_text=top_text, aux_files={
        p.name: p.read_bytes() for p in sorted(top.iterdir()) if p.is_file() and p.name != "config.json"},
        vision_prefix=vision_prefix(sio.open_folder(top / "vision_tower").keys()))
    rules, modules = component_rules(config, source.vision_prefix), component_modules(model)
    for name in COMPONENTS:
        source.components[name] = load_component(top / name, modules[name], rules[name], texts[name],
                                                 dtype=runtime.param_dtype, mesh=mesh, desc=name)
    model.hf_source = source
    return model


def fresh_vila_source(model) -> VILASource:
    """Configs and layout for a model made in JAX (no source checkpoint)."""
    config = model.config
    top = dict(config.hf) or {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama"}
    top.update({"mm_vision_select_layer": config.vision.select_layer, "mm_hidden_size": config.vision.hidden_size,
                "hidden_size": config.llm.hidden_size, "image_token_id": config.image_token_id,
                "mm_projector_type": config.projector.projector_type})
    projector_cfg = dict(config.projector.hf) or {"model_type": "v2l_projector"}
    projector_cfg["mm_projector_type"] = config.projector.projector_type
    configs = {"llm": config.llm.hf, "vision_tower": config.vision.hf, "mm_projector": projector_cfg}
    rules, modules = component_rules(config), component_modules(model)
    return VILASource(config_text=json.dumps(top, indent=2, sort_keys=True) + "\n", components={
        name: fresh_source(configs[name], rules[name], modules[name]) for name in COMPONENTS})


def save_longvila(model, path) -> None:
    """Writes the VILA layout of ``model`` to ``path``."""
    top = Path(path)
    top.mkdir(parents=True, exist_ok=True)
    source = getattr(model, "hf_source", None) or fresh_vila_source(model)
    rules, modules = component_rules(model.config, source.vision_prefix), component_modules(model)
    for name in COMPONENTS:
        save_component(top / name, modules[name], rules[name], source.components[name], desc=name)
    (top / "config.json").write_text(source.config_text)
    for name, data in source.aux_files.items():
        (top / name).write_bytes(data)
