"""Training configs: every shipped config loads; inheritance, overrides and bad keys; schedules."""

import glob

import numpy as np
import pytest

from longvila_jax.train.config import CONFIG_ROOT, apply_overrides, config_from_dict, load_config
from longvila_jax.train.data_setup import phase_of
from longvila_jax.train.optimizer import OptimConfig, learning_rate

STAGES = {"alignment", "pretrain", "short_sft", "context_extension", "long_sft"}


def test_every_model_size_has_the_five_stages():
    for size in ("tiny", "longvila-8b", "longvila-qwen2-7b"):
        found = {p.split("/")[-1][:-5] for p in glob.glob(str(CONFIG_ROOT / "train" / size / "*.json"))}
        assert STAGES <= found, (size, found)
        for stage in STAGES:
            config = load_config(CONFIG_ROOT / "train" / size / f"{stage}.json")
            assert config.stage.name == stage
            assert config.model.preset == size
            if stage == "context_extension":
                assert config.stage.lora and config.model.rope_theta and config.data.kind.endswith("text")
                assert len(config.data.seq_schedule) >= 2
            if stage == "long_sft":
                assert config.mesh.ring * config.mesh.ulysses != 1


def test_overrides_parse_json_and_reject_unknown_keys(tmp_path):
    path = CONFIG_ROOT / "train" / "tiny" / "short_sft.json"
    config = load_config(path, ["optim.lr=3e-4", "run.steps=7", "model.init=null", "data.seq_schedule=[[0,64]]",
                                "run.out=some/where"])
    assert config.optim.lr == 3e-4 and config.run.steps == 7 and config.model.init is None
    assert config.data.seq_schedule == ((0, 64),) and config.run.out == "some/where"
    with pytest.raises(ValueError, match="unknown key.*'stepz'"):
        load_config(path, ["run.stepz=3"])
    with pytest.raises(ValueError, match="unknown section"):
        config_from_dict({"optimiser": {}})
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["run.steps"])


def test_schedules(rng):
    lr, warmup, total = float(rng.uniform(1e-4, 1e-2)), int(rng.integers(2, 10)), 100
    cosine = learning_rate(OptimConfig(lr=lr, warmup_steps=warmup, total_steps=total, final_lr_ratio=0.1))
    np.testing.assert_allclose(float(cosine(warmup)), lr, rtol=1e-5)
    np.testing.assert_allclose(float(cosine(total)), 0.1 * lr, rtol=1e-4)
    assert float(cosine(0)) == 0.0  # a step strictly inside the warmup is on the linear ramp:
    np.testing.assert_allclose(float(cosine(warmup // 2)), lr * (warmup // 2) / warmup, rtol=1e-5)
    constant = learning_rate(OptimConfig(lr=lr, schedule="constant", warmup_steps=warmup))
    np.testing.assert_allclose([float(constant(s)) for s in (warmup, warmup + 50)], [lr, lr], rtol=1e-6)
    with pytest.raises(ValueError, match="cosine"):
        learning_rate(OptimConfig(schedule="linear"))
    assert phase_of(0, ((0, 128), (5, 256))) == (0, 128) and phase_of(7, ((0, 128), (5, 256))) == (1, 256)
