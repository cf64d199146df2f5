"""HF -> JAX -> HF is bit-identical; Orbax save/restore (sharded over a mesh) is identical."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers as tf

import hf_builders as hb
from longvila_jax import CausalLM, LongVILA
from longvila_jax.convert.component import param_variables
from longvila_jax.convert.orbax_io import load_orbax, save_orbax
from longvila_jax.convert.safetensors_io import open_folder
from longvila_jax.sharding import make_mesh


def assert_same_folder(a: Path, b: Path):
    """Same files; configs and small files byte-identical; every tensor bit-identical in the same shard."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix != ".safetensors":
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for folder in {rel.parent for rel in files_a if rel.suffix == ".safetensors"}:
        ta, tb = open_folder(a / folder), open_folder(b / folder)
        assert ta.file_order == tb.file_order
        assert ta.file_metadata == tb.file_metadata
        for key in ta.keys():
            x, y = ta.read(key), tb.read(key)
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vila_round_trip_is_bit_identical(tmp_path, seed, dtype):
    src = tmp_path / "src"
    llm_cfg = hb.llama_config(dtype=dtype)
    hb.write_vila(src, llm_cfg, hb.siglip_config(), "mlp_downsample", seed, shard="60KB")
    if dtype == "bfloat16":  # rewrite the LLM in bf16 so the round trip must restore the narrower dtype
        torch_llm = tf.AutoModelForCausalLM.from_pretrained(src / "llm", dtype=torch.bfloat16)
        torch_llm.save_pretrained(src / "llm", max_shard_size="60KB")
    assert (src / "llm" / "model.safetensors.index.json").exists()
    model = LongVILA.from_pretrained(src)  # float32 parameters
    assert model.llm.embed_tokens.embedding.get_value().dtype == np.float32
    model.save_pretrained(tmp_path / "out")
    assert_same_folder(src, tmp_path / "out")


def test_written_checkpoint_loads_in_transformers(tmp_path, seed):
    src = tmp_path / "src"
    torch_llm, torch_tower, _ = hb.write_vila(src, hb.qwen2_config(), hb.siglip_config(), "mlp2x_gelu", seed)
    model = LongVILA.from_pretrained(src)
    # change the weights in JAX, then check transformers sees the change exactly
    emb = model.llm.embed_tokens.embedding
    emb.set_value(emb.get_value() * 2.0)
    model.save_pretrained(tmp_path / "out")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "llm", dtype=torch.float32)
    np.testing.assert_array_equal(reloaded.get_input_embeddings().weight.detach().numpy(),
                                  2.0 * torch_llm.get_input_embeddings().weight.detach().numpy())
    tower = tf.SiglipVisionModel.from_pretrained(tmp_path / "out" / "vision_tower", dtype=torch.float32)
    expected = torch_tower.state_dict()
    assert tower.state_dict().keys() == expected.keys()
    for key, value in tower.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_fresh_jax_model_saves_a_loadable_checkpoint(tmp_path, seed, rng):
    """A model built in JAX (no source checkpoint) writes the VILA layout that transformers reads."""
    from flax import nnx
    from longvila_jax.models.config import LLMConfig, LongVILAConfig, ProjectorConfig, VisionConfig

    llm = LLMConfig.from_hf(hb.llama_config().to_dict())
    vision = VisionConfig.from_hf(hb.siglip_config().to_dict())
    config = LongVILAConfig(llm, vision, ProjectorConfig("mlp_downsample", vision.hidden_size, llm.hidden_size))
    model = LongVILA(config, rngs=nnx.Rngs(seed))
    model.save_pretrained(tmp_path / "fresh")
    torch_llm = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "fresh" / "llm", dtype=torch.float32)
    ids = rng.integers(0, llm.vocab_size, size=(1, 9)).astype(np.int32)
    with torch.no_grad():
        expected = torch_llm(torch.from_numpy(ids).long()).logits.numpy()
    got = np.asarray(model.llm(ids))
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-5
    again = LongVILA.from_pretrained(tmp_path / "fresh")
    for key, var in param_variables(model).items():
        np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(param_variables(again)[key].get_value()))


def test_orbax_save_restore_sharded_is_identical(tmp_path, seed):
    src = tmp_path / "src"
    hb.write_vila(src, hb.llama_config(), hb.siglip_config(), "mlp_downsample", seed)
    model = LongVILA.from_pretrained(src)
    save_orbax(model, tmp_path / "orbax")
    mesh = make_mesh(data=2, fsdp=2, ring=2, ulysses=1)
    restored = load_orbax(tmp_path / "orbax", mesh=mesh)
    before, after = param_variables(model), param_variables(restored)
    assert before.keys() == after.keys()
    for key in before:
        value = after[key].get_value()
        np.testing.assert_array_equal(np.asarray(before[key].get_value()), np.asarray(value))
        assert value.sharding.mesh.shape == mesh.shape
    # the ZeRO-3 rules split the MLP kernels over every mesh axis that divides them
    gate = after["llm.layers.mlp.gate_proj.kernel"].get_value()
    assert len(gate.addressable_shards) == 8 and gate.addressable_shards[0].data.shape[-1] == 96 // 8
    restored.save_pretrained(tmp_path / "back")
    assert_same_folder(src, tmp_path / "back")


def test_causal_lm_round_trip_tied_embeddings(tmp_path, seed):
    torch_lm = hb.causal_lm(hb.qwen2_config(), seed)
    torch_lm.save_pretrained(tmp_path / "src")
    lm = CausalLM.from_pretrained(tmp_path / "src")
    assert lm.lm_head is None
    save_orbax(lm, tmp_path / "orbax")
    load_orbax(tmp_path / "orbax").save_pretrained(tmp_path / "out")
    assert_same_folder(tmp_path / "src", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
