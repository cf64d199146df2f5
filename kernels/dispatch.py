"""Which backend serves an attention call: one table, one preference list per platform.

| impl     | where                | masks                                   | lse                     | given-lse bwd |
|----------|----------------------|-----------------------------------------|-------------------------|---------------|
| `xla`    | any device           | all (segments, positions, Sq != Sk)     | exact, float32          | yes           |
| `cudnn`  | GPU, bf16/fp16, D%8=0, D<=128 | full, or causal with default positions and Sq == Sk; no segments | cuDNN softmax stats | no |
| `triton` | CUDA GPU, bf16/fp16, D<=128 | all                              | exact, float32          | yes           |
| `mosaic` | Hopper GPU, bf16/fp16, D in (64, 128) | all                       | exact, float32          | yes           |

``auto`` takes the first valid backend of the platform's preference list (:func:`preference`: on
Hopper, plain causal calls of 2k to 16k tokens at D = 128 try ``mosaic`` before ``cudnn``).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from . import cudnn_backend, mosaic_backend, triton_backend, xla_backend

BACKENDS = {
    "xla": xla_backend,
    "cudnn": cudnn_backend,
    "triton": triton_backend,
    "mosaic": mosaic_backend,
}
# Fastest first (BENCHMARKS.md). cuDNN leads where its masks suffice (plain causal or full), except on the
# plain causal calls of ``mosaic_leads``. mosaic (Hopper) then serves packed segments, explicit positions and a
# given out/lse at about 1.4x triton (runs AH, AO), which serves them on Ampere.
AUTO_PREFERENCE = {
    "gpu": ("cudnn", "mosaic", "triton", "xla"),
}
# Causal calls with Sq == Sk in [min_len, max_len) and this head_dim, where mosaic's forward+backward beat JAX
# cuDNN's in the same runs on an H200 (B=1, 32 query heads over 8, D=128, bf16): 1.09x at 2k, 1.11x at 4k (run
# BQ), 1.04-1.05x at 8k (runs BR, BS; forward alone 1.05-1.14x). From 16k on they are level or cuDNN is ahead
# (0.99-1.01x at 16k, runs BL and BO; 0.98-1.00x at 32k, runs BL-BS), on the full mask cuDNN is (0.90x, runs
# AJ-AK), and below 2k and for D = 64 nothing was measured: cuDNN keeps those.
MOSAIC_LEADS = {"head_dim": 128, "min_len": 2048, "max_len": 16384}
DEFAULT_PREFERENCE = ("xla",)


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """The static facts of one call that decide which backends are valid."""

    platform: str  # "cpu", "gpu", "tpu"
    dtype: np.dtype
    head_dim: int
    q_len: int
    kv_len: int
    q_heads: int
    kv_heads: int
    causal: bool
    has_segments: bool  # any segment ids given
    has_positions: bool  # any positions given
    given_lse: bool  # the backward entry with a given out/lse


def current_platform() -> str:
    return jax.default_backend()


def _checked_on_gpu(backend, call: AttentionCall) -> bool:
    """Whether ``auto`` may pick ``backend`` for ``call``: head dims it serves but that no GPU run of
    tests/test_kernels_gpu.py has checked yet (``AUTO_HEAD_DIMS``) are left to an explicit ``impl``."""
    head_dims = getattr(backend, "AUTO_HEAD_DIMS", None)
    return head_dims is None or call.head_dim in head_dims


def mosaic_leads(call: AttentionCall) -> bool:
    """Whether ``call`` is a plain causal one where mosaic measured faster than cuDNN (``MOSAIC_LEADS``)."""
    lead = MOSAIC_LEADS
    return (call.causal and call.q_len == call.kv_len and call.head_dim == lead["head_dim"]
            and lead["min_len"] <= call.kv_len < lead["max_len"])


def preference(call: AttentionCall) -> tuple[str, ...]:
    """The backends ``auto`` tries for ``call``, fastest first."""
    order = AUTO_PREFERENCE.get(call.platform, DEFAULT_PREFERENCE)
    if call.platform == "gpu" and mosaic_leads(call):
        order = ("mosaic",) + tuple(name for name in order if name != "mosaic")
    return order


def choose(impl: str, call: AttentionCall):
    """The backend module for ``impl`` ('auto' or a name in BACKENDS).

    Raises ValueError for an unknown name or a backend that cannot serve ``call``
    (with the reason).
    """
    if impl == "auto":
        for name in preference(call):
            backend = BACKENDS[name]
            if backend.unsupported(call) is None and _checked_on_gpu(backend, call):
                return backend
        raise ValueError(f"no attention backend can serve {call}")
    if impl not in BACKENDS:
        raise ValueError(f"impl must be 'auto' or one of {sorted(BACKENDS)}, got {impl!r}")
    backend = BACKENDS[impl]
    reason = backend.unsupported(call)
    if reason is not None:
        raise ValueError(f"impl={impl!r} cannot serve this call: {reason}")
    return backend
