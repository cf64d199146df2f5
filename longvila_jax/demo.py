"""The main job: train a tiny LongVILA on synthetic needle videos with MM-SP, and show it learned.

1. write synthetic needle videos (``data.synthetic``): a training set and a
   held-out evaluation set; each video hides one frame showing a digit, a
   colour or a shape among noisy distractor frames, with the question;
2. build a tiny LongVILA (``configs/model/tiny.json``, random weights) on the
   mesh ``data 2 x ring 2 x ulysses 2`` (8 simulated CPU devices without an
   accelerator; the GPUs when there are some);
3. needle accuracy before training (the best-scoring of the closed answer
   set; ``train.needle_eval``);
4. train everything with the training stack (``configs/train/tiny/demo.json``:
   the data pipeline, frames sharded over all devices, the sequence over
   ring x ulysses, ZeRO-3, AdamW, checkpoints);
5. needle accuracy after training, the checkpoint, the export (an Orbax
   model folder) and its conversion to the VILA layout, checked bit-identical.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIG_DIR / "train" / "tiny" / "demo.json"
EVAL_VIDEOS = 90


def load_preset(name: str = "tiny"):
    from longvila_jax.models.config import config_from_dict

    path = CONFIG_DIR / "model" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: model preset not found; presets live in {CONFIG_DIR / 'model'}")
    return config_from_dict(json.loads(path.read_text()), where=str(path))


def demo_mesh_overrides(devices: int) -> list[str]:
    """data 2 x ring 2 x ulysses 2 on 8 devices; on other counts the nearest layout with ring/ulysses 2."""
    if devices % 4 == 0:
        data, ring, ulysses = devices // 4, 2, 2
    elif devices % 2 == 0:
        data, ring, ulysses = devices // 2, 2, 1
    else:
        data, ring, ulysses = devices, 1, 1
    return [f"mesh.data={data}", "mesh.fsdp=1", f"mesh.ring={ring}", f"mesh.ulysses={ulysses}"]


def _videos(root: Path, count: int, seed: int, num_frames: int) -> Path:
    """The needle set under ``root`` (reused when a previous demo wrote the same one)."""
    from longvila_jax.data import synthetic

    manifest, stamp = root / "manifest.jsonl", root / "settings.json"
    settings = {"count": count, "seed": seed, "num_frames": num_frames}
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        return manifest
    shutil.rmtree(root, ignore_errors=True)
    synthetic.make_needle_dataset(root, count, seed=seed, num_frames=num_frames, progress=False)
    stamp.write_text(json.dumps(settings))
    return manifest


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _check_vila_export(model, folder: Path) -> bool:
    """Writes ``model`` in the VILA layout, reads it back, and compares every tensor bit for bit."""
    import contextlib
    import io

    from longvila_jax.convert.component import param_variables
    from longvila_jax.models.longvila import LongVILA

    with contextlib.redirect_stderr(io.StringIO()):  # the converter's per-file progress bars
        model.save_pretrained(folder)
        back = LongVILA.from_pretrained(folder)
    mine, theirs = param_variables(model), param_variables(back)
    return mine.keys() == theirs.keys() and all(
        np.array_equal(np.asarray(jax.device_get(mine[k].get_value())), np.asarray(theirs[k].get_value()))
        for k in mine)


def run_demo(workdir="runs/demo", seed: int = 0, steps: int | None = None) -> int:
    from longvila_jax.train.config import load_config
    from longvila_jax.train.needle_eval import load_examples, needle_accuracy
    from longvila_jax.train.trainer import Run, train

    start = time.perf_counter()
    work = Path(workdir)
    for stale in ("train", "hf"):
        shutil.rmtree(work / stale, ignore_errors=True)
    rows = []

    overrides = [f"run.out={work / 'train'}", f"data.root={work / 'data' / 'train'}", f"model.seed={seed}",
                 f"data.seed={seed}", "run.progress=true", *demo_mesh_overrides(jax.device_count())]
    if steps is not None:
        overrides += [f"run.steps={steps}", f"optim.total_steps={steps}",
                      f"optim.warmup_steps={max(1, min(20, steps // 10))}"]
    config = load_config(DEMO_CONFIG, overrides)
    t0 = time.perf_counter()
    _videos(work / "data" / "train", config.data.num_videos, seed, config.data.num_frames)
    eval_manifest = _videos(work / "data" / "eval", EVAL_VIDEOS, seed + 10_000, config.data.num_frames)
    rows.append(("needle videos", f"{config.data.num_videos} train / {EVAL_VIDEOS} held out, "
                 f"{config.data.num_frames} frames each (digit, colour, shape)", time.perf_counter() - t0))

    t0 = time.perf_counter()
    run = Run(config)
    params = sum(x.size for x in jax.tree.leaves((run.state["params"], run.frozen)))
    mesh = " x ".join(f"{k} {v}" for k, v in run.mesh.shape.items())
    examples = load_examples(eval_manifest, run.source.tokenizer, run.model_config, config.data.num_frames)
    score = dict(rows=8, vocab_chunk=config.run.vocab_chunk)
    before = needle_accuracy(run.graphdef, run.state["params"], run.frozen, examples, run.model_config, run.mesh,
                             **score)
    rows.append(("accuracy before", f"{_percent(before['accuracy'])} (chance {_percent(before['chance'])}); "
                 f"tiny LongVILA, {params / 1e6:.2f} M parameters, random", time.perf_counter() - t0))

    t0 = time.perf_counter()
    summary = train(config, run=run)
    losses = summary["losses"]
    metrics = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines()]
    rate = np.median([m["tokens_per_s"] for m in metrics[1:]] or [0.0])
    first, last = losses[min(losses)], losses[max(losses)]
    rows.append(("training", f"{summary['step']} steps, loss {first:.2f} -> {last:.2f}, {rate:,.0f} tokens/s, "
                 f"compile {summary['compile_s']:.0f} s", time.perf_counter() - t0))
    rows.append(("checkpoint", f"{run.checkpointer.directory / str(run.checkpointer.latest_step())}", None))

    t0 = time.perf_counter()
    after = needle_accuracy(run.graphdef, run.state["params"], run.frozen, examples, run.model_config, run.mesh,
                            **score)
    kinds = ", ".join(f"{k} {_percent(v)}" for k, v in after["per_kind"].items())
    rows.append(("accuracy after", f"{_percent(after['accuracy'])} ({kinds}; chance {_percent(after['chance'])})",
                 time.perf_counter() - t0))

    t0 = time.perf_counter()
    same = _check_vila_export(run.model(), work / "hf")
    rows.append(("export", f"{summary['export']} (Orbax); {work / 'hf'} (VILA layout, "
                 f"{'bit-identical' if same else 'DIFFERENT'})", time.perf_counter() - t0))

    print(f"\nlongvila-jax demo on {jax.device_count()} {jax.devices()[0].platform} devices, mesh {mesh}")
    width = max(len(r[0]) for r in rows)
    for name, note, took in rows:
        took_text = " " * 8 if took is None else f"{took:6.1f} s"
        print(f"  {name:<{width}}  {took_text}  {note}")
    print(f"  {'total':<{width}}  {time.perf_counter() - start:6.1f} s  loss curve: {run.out / 'loss.png'}")
    ok = same and after["accuracy"] >= 2 * after["chance"] and after["accuracy"] > before["accuracy"]
    print("demo " + ("passed" if ok else "FAILED (accuracy after training is not clearly above chance)"))
    return 0 if ok else 1
