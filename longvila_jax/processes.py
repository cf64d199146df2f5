"""Multi-process runs (``jax.distributed``): the one barrier every layer uses."""

from __future__ import annotations

import jax


def barrier(name: str) -> None:
    """Waits until every process reaches ``barrier(name)``; a no-op in a one-process run."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
