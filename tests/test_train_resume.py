"""Checkpoints: SIGKILL at a random step, restart, SIGTERM, restart: the loss trajectory is the uninterrupted one.

All runs go through the command line (``python -m longvila_jax.cli train``)
in fresh processes, with a checkpoint after every step (asynchronous, so a
kill often lands in the middle of a save).  The interrupted run's losses,
step by step (the last value logged for each step), must equal those of an
uninterrupted run exactly: model, optimizer, step, RNG and the data
iterator are all restored.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from longvila_jax.train.metrics import read_losses

STEPS = 6


def command(out: Path, data: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "longvila_jax.cli", "train", "tiny/short_sft",
            f"run.out={out}", f"data.root={data}", f"run.compilation_cache={cache}", f"run.steps={STEPS}",
            "run.progress=false", "run.export=false", "checkpoint.every=1", "checkpoint.keep=2",
            "data.num_videos=6", "data.num_frames=4", "data.max_frames_per_row=8", "data.seq_len=256",
            "optim.total_steps=6", "optim.warmup_steps=1", "model.init=null", "model.seed=3"]


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return out


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in lines), default=0)


def run_until(cmd, out: Path, step: int, sig, timeout=180) -> subprocess.CompletedProcess:
    """Starts ``cmd``, sends ``sig`` once a step >= ``step`` is logged, returns the finished process."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.time()
    try:
        while proc.poll() is None and logged_steps(out) < step:
            if time.time() - start > timeout:
                raise TimeoutError(f"no step {step} within {timeout} s")
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(sig)
        text = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, text, "")


def test_sigkill_then_sigterm_resume_continues_identically(tmp_path, rng):
    data, cache = tmp_path / "needle", tmp_path / "jax_cache"
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference, data, cache), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    want = read_losses(reference / "metrics.jsonl")
    assert sorted(want) == list(range(1, STEPS + 1))

    out = tmp_path / "interrupted"
    kill_at = int(rng.integers(1, 4))
    killed = run_until(command(out, data, cache), out, kill_at, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]

    term_at = int(rng.integers(kill_at + 1, STEPS))
    stopped = run_until(command(out, data, cache), out, term_at, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert "stopped by SIGTERM" in stopped.stdout or logged_steps(out) == STEPS, stopped.stdout[-3000:]
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == logged_steps(out), (saved, logged_steps(out))  # the stop saved its last step

    finished = subprocess.run(command(out, data, cache), env=env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    got = read_losses(out / "metrics.jsonl")
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal(np.array(list(got.values())), np.array(list(want.values())),
                                  err_msg=f"killed after step {kill_at}, SIGTERM after step {term_at}")


def test_interrupted_save_leaves_last_good_checkpoint(tmp_path, seed):
    """A save that died half-way (a temporary folder with partial files) is ignored; the last good one restores."""
    import jax
    import jax.numpy as jnp

    from longvila_jax.train.checkpoint import Checkpointer

    class Data:  # a data source with a trivial state
        def __init__(self):
            self.state = b'{"position": 0}'

        def get_state(self):
            return self.state

        def set_state(self, state):
            self.state = state

        def start_prefetch(self):
            pass

    state = {"params": {"w": jnp.arange(6.0) + seed % 7}, "step": jnp.asarray(1)}
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(1, state, {}, Data(), {"step": 1})
    ckpt.close()
    partial = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(np.random.default_rng(seed).bytes(100))

    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    assert ckpt.latest_step() == 1
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=jax.sharding.SingleDeviceSharding(
                                                               jax.devices()[0])), state)
    data = Data()
    data.state = b"{}"
    restored, frozen, meta = ckpt.restore(1, abstract, {}, data)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))
    assert meta["step"] == 1 and data.state == b'{"position": 0}' and frozen == {}
    ckpt.close()
