"""Where a run's metrics go: JSONL always, a tqdm bar, TensorBoard when installed, a loss-curve PNG at the end.

Only process 0 writes.  One JSONL line per logged step::

    {"step": 12, "loss": 3.21, "tokens_per_s": ..., "step_time_s": ..., "tflops_per_device": ...,
     "mfu": ... | null, "lr": ..., "grad_norm": ..., "skipped/all": 0, ...}

A restarted run appends to the same file; a step that was run again after a
restore appears twice (readers keep the last line of each step, as
:func:`read_losses` does).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import jax

logger = logging.getLogger("longvila_jax.train")


def _tensorboard_writer(folder: Path):
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            mod = __import__(module, fromlist=["SummaryWriter"])
            return mod.SummaryWriter(str(folder))
        except Exception:  # noqa: BLE001 - not installed (or its tensorboard dependency missing)
            continue
    return None


class MetricsLogger:
    """``log(step, metrics)``, ``close(plot=True)``; ``folder`` gets ``metrics.jsonl``, ``tb/``, ``loss.png``."""

    def __init__(self, folder, *, total_steps: int, initial_step: int = 0, progress: bool = True):
        self.folder = Path(folder)
        self.primary = jax.process_index() == 0
        self.bar = None
        self.tb = None
        if not self.primary:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.folder / "metrics.jsonl", "a")
        self.tb = _tensorboard_writer(self.folder / "tb")
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.primary:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key, value, step)
        if self.bar is not None:
            shown = {k: record[k] for k in ("loss", "tokens_per_s", "mfu") if record.get(k) is not None}
            self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                 refresh=False)  # drawn once per flush, by advance()

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self, plot: bool = True) -> Path | None:
        if not self.primary:
            return None
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()
        return plot_losses(self.folder / "metrics.jsonl", self.folder / "loss.png") if plot else None


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def read_losses(path) -> dict[int, float]:
    """``{step: loss}`` from a metrics JSONL (the last line of each step wins)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("loss") is not None:
                out[int(record["step"])] = float(record["loss"])
    return dict(sorted(out.items()))


def plot_losses(jsonl, png) -> Path | None:
    """Writes the loss curve of ``jsonl`` to ``png`` (matplotlib, no display); None if nothing to plot."""
    losses = read_losses(jsonl)
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(list(losses), list(losses.values()), lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (token mean)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return Path(png)
