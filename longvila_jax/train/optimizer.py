"""The optimizer: global-norm clipping, then AdamW on a warmup + cosine or constant schedule.

Weight decay applies to matrices only: parameters with at least two logical
axes other than ``layers`` (so the stacked norm scales ``[layers, embed]``
and biases are not decayed).  The optimizer is built for the *trainable*
parameters only (``train.freeze``), so frozen parameters hold no state.
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """``schedule``: ``cosine`` (linear warmup to ``lr``, cosine to ``lr * final_lr_ratio``) or
    ``constant`` (linear warmup, then ``lr``)."""

    lr: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
    """The schedule of ``cfg`` (step -> learning rate)."""
    warmup = max(int(cfg.warmup_steps), 0)
    if cfg.schedule == "cosine":
        decay = max(int(cfg.total_steps) - warmup, 1)
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else cfg.lr, cfg.lr, warmup, warmup + decay,
                                                  end_value=cfg.lr * cfg.final_lr_ratio)
    if cfg.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)],
                                    [warmup])
    raise ValueError(f"optim.schedule {cfg.schedule!r} is unknown; use 'cosine' or 'constant'")


def decay_mask(logical_axes: dict) -> dict:
    """True for matrices (>= 2 logical axes besides ``layers``) in a tree of logical-axes tuples."""
    return jax.tree.map(lambda axes: sum(a != "layers" for a in axes) >= 2, logical_axes,
                        is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(cfg: OptimConfig, logical_axes: dict) -> optax.GradientTransformation:
    """Clipping (if ``clip_norm``) + AdamW over a trainable tree whose leaves' axes are ``logical_axes``."""
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask(logical_axes)))
    return optax.chain(*parts)
