"""Choosing the devices before JAX starts: real accelerators, or a simulated CPU mesh."""

from __future__ import annotations

import os
import shutil

SIMULATED_DEVICES = 8


def has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def simulate_cpu_mesh_if_no_accelerator(devices: int = SIMULATED_DEVICES) -> bool:
    """With no GPU (and no explicit ``JAX_PLATFORMS``), make JAX expose ``devices`` CPU devices.

    Must run before ``jax`` is imported; returns True when the simulated mesh is in use.
    """
    if os.environ.get("JAX_PLATFORMS") or has_nvidia_gpu():
        return False
    flag = f"--xla_force_host_platform_device_count={devices}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    return True
