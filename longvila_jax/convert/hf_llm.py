"""Plain Hugging Face Llama / Qwen2 folders <-> ``CausalLM``."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from longvila_jax.convert.component import fresh_source, load_component, read_config, save_component
from longvila_jax.convert.errors import CheckpointError
from longvila_jax.convert.rules import llm_rules
from longvila_jax.models.config import ConfigError, LLMConfig, RuntimeConfig


def llm_config(folder: Path) -> tuple[LLMConfig, str]:
    raw, text = read_config(folder)
    try:
        return LLMConfig.from_hf(raw, where=str(folder / "config.json")), text
    except ConfigError as err:
        raise CheckpointError(str(err)) from err


def load_causal_lm(path, runtime: RuntimeConfig, mesh=None):
    """A ``CausalLM`` with the weights of the HF folder ``path``."""
    from longvila_jax.models.causal_lm import CausalLM

    folder = Path(path)
    cfg, text = llm_config(folder)
    model = nnx.eval_shape(lambda: CausalLM(cfg, runtime, nnx.Rngs(0)))
    model.hf_source = load_component(folder, model, llm_rules(cfg), text, dtype=runtime.param_dtype, mesh=mesh)
    return model


def save_causal_lm(model, path) -> None:
    source = getattr(model, "hf_source", None) or fresh_source(model.config.hf, llm_rules(model.config), model)
    save_component(Path(path), model, llm_rules(model.config), source)
