"""Test setup: 8 simulated CPU devices, fresh random seeds (printed, so a failure can be replayed)."""

import os
import sys

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
if not (os.path.exists("/dev/nvidia0") or os.environ.get("JAX_PLATFORMS")):
    os.environ["JAX_PLATFORMS"] = "cpu"  # no GPU: the simulated CPU mesh; with one, gpu-marked tests run
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # workers sharing one GPU: no 75% each
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # One compilation cache for this run, shared by the xdist workers and the processes tests start (they
    # inherit the variables): much of the suite's CPU time went to XLA compiling the same small programs again
    # (jax.clear_caches between lowerings, the same eager ops in every test). Removed when the run ends.
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="longvila-jax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed() -> int:
    """A fresh seed for each test; printed so that a failing case can be replayed."""
    value = int(np.random.SeedSequence().entropy % (2**31))
    print(f"seed={value}")
    return value


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def interpreted_mosaic(monkeypatch):
    """The Mosaic kernels in Pallas' GPU interpret mode wherever the script calls them, the backend
    accepting the CPU, 3 persistent workers, and the benches' shapes cut to 2 query heads over 1."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from longvila_jax.kernels import mosaic_backend, mosaic_backward, mosaic_common, mosaic_forward, mosaic_fused

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import bench_attention
    import bench_mosaic_kernels

    params = plgpu.InterpretGPUParams()
    for module, name in ((mosaic_common, "kernel"), (mosaic_forward, "forward"), (mosaic_backward, "dq"),
                         (mosaic_backward, "dkdv"), (mosaic_fused, "dkdv_dq")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, interpret=None, _f=original, **k: _f(
            *a, interpret=interpret or params, **k))
    monkeypatch.setattr(mosaic_backend, "unsupported", lambda call: None)
    monkeypatch.setitem(mosaic_backend.PERSISTENT_WORKERS, "count", 3)
    monkeypatch.setattr(bench_mosaic_kernels, "Q_HEADS", 2)
    monkeypatch.setattr(bench_mosaic_kernels, "KV_HEADS", 1)
    monkeypatch.setattr(bench_attention, "Q_HEADS", 2)
    monkeypatch.setattr(bench_attention, "KV_HEADS", 1)
