"""Every bad checkpoint gets an error naming the file, the key and what was expected."""

import json
import re

import numpy as np
import pytest
import torch

import hf_builders as hb
from longvila_jax import CausalLM, LongVILA
from longvila_jax.convert.errors import CheckpointError
from longvila_jax.convert.orbax_io import load_orbax, save_orbax
from longvila_jax.convert.safetensors_io import open_folder, write_file


@pytest.fixture
def vila(tmp_path, seed):
    hb.write_vila(tmp_path / "ckpt", hb.qwen2_config(), hb.siglip_config(), "mlp_downsample", seed)
    return tmp_path / "ckpt"


def test_missing_component_folder(vila):
    import shutil

    shutil.rmtree(vila / "vision_tower")
    with pytest.raises(CheckpointError, match=re.escape(str(vila / "vision_tower")) + ".*missing"):
        LongVILA.from_pretrained(vila)


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LongVILA.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        CausalLM.from_pretrained(tmp_path / "nowhere")


def test_missing_tensor(vila):
    folder = open_folder(vila / "mm_projector")
    tensors = {k: folder.read(k) for k in folder.keys() if k != "layers.4.weight"}
    write_file(vila / "mm_projector" / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"mm_projector.*'layers\.4\.weight' is missing"):
        LongVILA.from_pretrained(vila)


def test_shape_that_does_not_match_the_config(vila):
    cfg = json.loads((vila / "llm" / "config.json").read_text())
    cfg["intermediate_size"] = 72
    (vila / "llm" / "config.json").write_text(json.dumps(cfg))
    pattern = (r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(80, 64\), "
               r"but .*llm/config\.json implies \(72, 64\)")
    with pytest.raises(CheckpointError, match=pattern):
        LongVILA.from_pretrained(vila)


def test_unknown_projector_type(vila):
    (vila / "mm_projector" / "config.json").write_text(json.dumps({"mm_projector_type": "qformer"}))
    with pytest.raises(CheckpointError, match="mm_projector_type 'qformer' is not supported; use one of"):
        LongVILA.from_pretrained(vila)


def test_unknown_model_family(vila):
    cfg = json.loads((vila / "llm" / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (vila / "llm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"llm/config\.json: model_type 'gpt2' is not supported"):
        LongVILA.from_pretrained(vila)


def test_pickled_weights_are_refused(tmp_path, seed):
    torch_lm = hb.causal_lm(hb.qwen2_config(), seed)
    torch_lm.save_pretrained(tmp_path, safe_serialization=False) if _can_pickle() else _write_bin(torch_lm, tmp_path)
    for p in tmp_path.glob("*.safetensors*"):
        p.unlink()
    with pytest.raises(CheckpointError, match=r"pickled PyTorch weights \(pytorch_model\.bin\).*arbitrary code"):
        CausalLM.from_pretrained(tmp_path)


def _can_pickle() -> bool:
    import inspect
    import transformers

    return "safe_serialization" in inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters


def _write_bin(model, folder):
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def test_truncated_safetensors(vila):
    path = vila / "mm_projector" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"mm_projector/model\.safetensors: tensor 'layers\.4\.\w+' is truncated"):
        LongVILA.from_pretrained(vila)


def test_orbax_refuses_non_empty_destination_and_foreign_folder(vila, tmp_path):
    model = LongVILA.from_pretrained(vila)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(CheckpointError, match="busy: exists and is not empty"):
        save_orbax(model, tmp_path / "busy")
    with pytest.raises(CheckpointError, match="is not a longvila-jax Orbax checkpoint"):
        load_orbax(vila)


def test_placeholder_count_must_match_frames(vila, rng):
    model = LongVILA.from_pretrained(vila)
    ids = rng.integers(0, 100, size=(2, 8)).astype(np.int32)
    ids[0, 1] = ids[1, 3] = ids[1, 5] = model.config.image_token_id
    frames = np.zeros((4, 42, 42, 3), np.float32)
    with pytest.raises(ValueError, match=r"rows hold \[1, 2\] image placeholders .* 2 per row"):
        model(ids, frames)
    two_per_row = np.ones((2, 8), np.int32)
    two_per_row[:, [2, 5]] = model.config.image_token_id
    with pytest.raises(ValueError, match=r"frames of shape \(40, 40, 3\), the vision tower expects \(42, 42, 3\)"):
        model(two_per_row, np.zeros((4, 40, 40, 3), np.float32))


def test_causal_lm_rejects_out_of_vocabulary_ids(tmp_path, seed):
    hb.causal_lm(hb.qwen2_config(), seed).save_pretrained(tmp_path)
    lm = CausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 150\), e\.g\. -200"):
        lm(np.array([[1, -200, 3]], np.int32))


def test_image_token_id_from_tokenizer_and_override(vila):
    (vila / "llm" / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [{"id": 148, "content": "<image>", "special": True}], "model": {"vocab": {}}}))
    assert LongVILA.from_pretrained(vila).config.image_token_id == 148
    from longvila_jax.convert.vila import load_longvila
    from longvila_jax.models.config import RuntimeConfig

    assert load_longvila(vila, RuntimeConfig(), image_token_id=7).config.image_token_id == 7
