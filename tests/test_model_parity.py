"""Parity with Hugging Face transformers (PyTorch, float32) on tiny random models."""

import numpy as np
import pytest
import torch
from scipy.special import erf

import hf_builders as hb
from longvila_jax import CausalLM, LongVILA
from longvila_jax.kernels.testing import rel_err
from longvila_jax.models.config import LEGACY_IMAGE_TOKEN_ID


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_causal_lm_logits_match_transformers(tmp_path, seed, rng, family):
    config = hb.llama_config() if family == "llama" else hb.qwen2_config()
    torch_lm = hb.causal_lm(config, seed)
    torch_lm.save_pretrained(tmp_path)
    lm = CausalLM.from_pretrained(tmp_path)
    input_ids = rng.integers(0, config.vocab_size, size=(2, 41)).astype(np.int32)
    with torch.no_grad():
        expected = torch_lm(torch.from_numpy(input_ids).long()).logits.numpy()
    got = np.asarray(lm(input_ids))
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-5


def test_llama3_rope_scaling_is_exercised():
    """The tiny Llama config puts frequencies in all three llama3 bands, so parity tests them."""
    from longvila_jax.models.rope import inverse_frequencies
    from longvila_jax.models.config import rope_parameters

    cfg = hb.llama_config().to_dict()
    params = rope_parameters(cfg)
    scaled = inverse_frequencies(16, params)
    plain = inverse_frequencies(16, {"rope_theta": params["rope_theta"], "rope_type": "default"})
    ratio = plain / scaled
    assert np.any(np.isclose(ratio, 1.0)) and np.any(np.isclose(ratio, 8.0))
    assert np.any((ratio > 1.01) & (ratio < 7.99))


def test_siglip_features_match_transformers(tmp_path, seed, rng):
    from longvila_jax.convert.component import load_component
    from longvila_jax.convert.rules import vision_prefix, vision_rules
    from longvila_jax.convert.safetensors_io import open_folder
    from longvila_jax.models.config import RuntimeConfig, VisionConfig
    from longvila_jax.models.siglip import SiglipVisionTower
    from flax import nnx

    config = hb.siglip_config()
    torch_tower = hb.siglip(config, seed)
    torch_tower.save_pretrained(tmp_path)
    for select in (-2, 2):
        cfg = VisionConfig.from_hf(config.to_dict(), select_layer=select)
        tower = nnx.eval_shape(lambda: SiglipVisionTower(cfg, RuntimeConfig(), nnx.Rngs(0)))
        load_component(tmp_path, tower, vision_rules(cfg, vision_prefix(open_folder(tmp_path).keys())), "{}",
                       dtype=np.float32)
        frames = rng.standard_normal((3, 42, 42, 3)).astype(np.float32)
        with torch.no_grad():
            out = torch_tower(torch.from_numpy(frames.transpose(0, 3, 1, 2)), output_hidden_states=True)
        expected = out.hidden_states[select].numpy()
        got = np.asarray(tower(frames))
        assert got.shape == (3, 49, 48)
        assert rel_err(got, expected) <= 1e-5


def numpy_projector(features: np.ndarray, grid: int, kind: str, w: dict) -> np.ndarray:
    """Independent NumPy projector: 2x2 downsample by explicit loops, LayerNorm, Linear, exact GELU, Linear."""
    gelu = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))  # noqa: E731
    linear = lambda x, name: x @ w[f"{name}.weight"].T + w[f"{name}.bias"]  # noqa: E731
    x = features.astype(np.float64)
    if kind.startswith("mlp_downsample"):
        n, _, c = x.shape
        half = (grid + 1) // 2
        image = np.zeros((n, 2 * half, 2 * half, c))
        image[:, :grid, :grid] = x.reshape(n, grid, grid, c)
        tokens = np.empty((n, half * half, 4 * c))
        for i in range(half):
            for j in range(half):
                tokens[:, i * half + j] = np.concatenate(
                    [image[:, 2 * i, 2 * j], image[:, 2 * i, 2 * j + 1], image[:, 2 * i + 1, 2 * j],
                     image[:, 2 * i + 1, 2 * j + 1]], axis=-1)
        mean = tokens.mean(-1, keepdims=True)
        var = tokens.var(-1, keepdims=True)
        x = (tokens - mean) / np.sqrt(var + 1e-5) * w["layers.1.weight"] + w["layers.1.bias"]
        return linear(gelu(linear(x, "layers.2")), "layers.4")
    if kind == "mlp2x_gelu":
        return linear(gelu(linear(x, "layers.0")), "layers.2")
    return linear(x, "layers")


@pytest.mark.parametrize("family,projector", [("llama", "mlp_downsample"), ("qwen2", "mlp_downsample_2x2_fix"),
                                              ("llama", "mlp2x_gelu"), ("qwen2", "linear")])
def test_longvila_logits_match_composed_reference(tmp_path, seed, rng, family, projector):
    llm_cfg = hb.llama_config() if family == "llama" else hb.qwen2_config()
    vision_cfg = hb.siglip_config()
    torch_llm, torch_tower, proj_w = hb.write_vila(tmp_path, llm_cfg, vision_cfg, projector, seed)
    model = LongVILA.from_pretrained(tmp_path)
    assert model.config.image_token_id == LEGACY_IMAGE_TOKEN_ID
    batch, seq, per_row = 2, 13, 2
    input_ids = rng.integers(0, llm_cfg.vocab_size, size=(batch, seq)).astype(np.int32)
    for row in range(batch):
        input_ids[row, rng.choice(seq, per_row, replace=False)] = LEGACY_IMAGE_TOKEN_ID
    frames = rng.standard_normal((batch * per_row, 42, 42, 3)).astype(np.float32)

    with torch.no_grad():
        feats = torch_tower(torch.from_numpy(frames.transpose(0, 3, 1, 2)), output_hidden_states=True).hidden_states[-2]
        visual = numpy_projector(feats.numpy(), 7, projector, proj_w)
        table = torch_llm.get_input_embeddings().weight.numpy().astype(np.float64)
        rows, frame = [], 0
        for row in range(batch):
            pieces = []
            for token in input_ids[row]:
                if token == LEGACY_IMAGE_TOKEN_ID:
                    pieces.append(visual[frame])
                    frame += 1
                else:
                    pieces.append(table[token][None])
            rows.append(np.concatenate(pieces))
        embeds = torch.from_numpy(np.stack(rows)).float()
        expected = torch_llm(inputs_embeds=embeds).logits.numpy()

    got = np.asarray(model(input_ids, frames))
    tokens_per_frame = 16 if projector.startswith("mlp_downsample") else 49
    assert got.shape == (batch, seq - per_row + per_row * tokens_per_frame, llm_cfg.vocab_size)
    assert rel_err(got, expected) <= 1e-5
