"""Work done while a call is traced (its result a constant of the compiled program) instead of in it.

JAX evaluates operations on concrete arrays eagerly under ``jax.ensure_compile_time_eval``. That is
only possible outside a manual-sharding context: inside ``shard_map`` an eager op would need a
sharding for a mesh whose axes are manual, which JAX refuses. There the work stays in the program.
"""

from __future__ import annotations

import contextlib

import jax


def in_manual_context() -> bool:
    """Whether tracing is inside ``shard_map`` (the current abstract mesh has manual axes)."""
    return bool(jax.sharding.get_abstract_mesh().manual_axes)


def can_evaluate(*arrays) -> bool:
    """Whether ops on ``arrays`` may run now: all concrete (none a tracer) and no manual mesh axes."""
    return not in_manual_context() and not any(isinstance(x, jax.core.Tracer) for x in arrays)


def evaluation(now: bool):
    """``jax.ensure_compile_time_eval()`` when ``now``, else a context that changes nothing."""
    return jax.ensure_compile_time_eval() if now else contextlib.nullcontext()
