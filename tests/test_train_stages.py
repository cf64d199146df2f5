"""Every tiny stage config runs (2 steps each), chained through its exports as in a real pipeline.

alignment -> pretrain -> short SFT -> context extension (LoRA, larger RoPE
base, two lengths) -> long SFT (MM-SP on data 2 x ring 2 x ulysses 2).
Checks what each stage promises: finite losses, only the stage's parameters
change, checkpoints and exports are written, LoRA is merged on export and
the new RoPE base is in the exported config (LoRA merged: the export holds
the plain kernels and no adapter).
"""

import json
import math

import jax
import numpy as np
import pytest

from longvila_jax.train.config import CONFIG_ROOT, load_config
from longvila_jax.train.trainer import train

STAGES = ("alignment", "pretrain", "short_sft", "context_extension", "long_sft")
FAST = ["run.steps=2", "run.progress=false", "checkpoint.every=0", "data.num_videos=6", "data.num_frames=4",
        "data.max_frames_per_row=8", "optim.total_steps=2", "optim.warmup_steps=1"]
SHAPES = {"context_extension": ["data.seq_schedule=[[0, 128], [1, 256]]", "data.num_documents=16",
                                "data.doc_words=[20, 80]"],
          "long_sft": ["data.seq_len=512", "data.num_frames=8", "data.max_frames_per_row=16"]}


def exported_keys(folder):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return set(ckptr.metadata((folder / "params").absolute()).item_metadata.keys())


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("model", ["tiny"])
def test_stage_configs_run_in_a_chain(tmp_path, model):
    init = None
    for stage in STAGES:
        out = tmp_path / stage
        overrides = FAST + SHAPES.get(stage, ["data.seq_len=256"]) + [
            f"run.out={out}", f"model.init={json.dumps(str(init)) if init else 'null'}"]
        config = load_config(CONFIG_ROOT / "train" / model / f"{stage}.json", overrides)
        summary = train(config)
        run = summary["run"]
        assert summary["step"] == 2 and sorted(summary["losses"]) == [1, 2], stage
        assert all(math.isfinite(v) for v in summary["losses"].values()), (stage, summary["losses"])
        assert run.checkpointer.latest_step() == 2
        export = summary["export"]
        assert (export / "longvila_jax.json").exists(), stage
        keys = exported_keys(export)
        assert "llm.layers.self_attn.q_proj.kernel" in keys and not any("lora" in k for k in keys), stage
        if stage == "alignment":  # only the projector trains
            assert set(k.split("'")[1] for k in flat(run.state["params"])) == {"mm_projector"}
        if stage == "context_extension":
            assert {row["seq_len"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())} \
                == {128, 256}
            llm_cfg = json.loads((export / "hf_skeleton" / "llm" / "config.json").read_text())
            assert llm_cfg["rope_theta"] == config.model.rope_theta
        if stage == "long_sft":
            assert dict(run.mesh.shape) == {"data": 2, "fsdp": 1, "ring": 2, "ulysses": 2}
        assert (out / "loss.png").exists()
        init = export
