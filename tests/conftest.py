"""Test setup: 8 simulated CPU devices, fresh random seeds (printed, so a failure can be replayed)."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
if not (os.path.exists("/dev/nvidia0") or os.environ.get("JAX_PLATFORMS")):
    os.environ["JAX_PLATFORMS"] = "cpu"  # no GPU: the simulated CPU mesh; with one, gpu-marked tests run
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
