"""Starting ``jax.distributed`` from the environment (before any JAX computation).

Explicit variables, as ``scripts/launch_local.sh`` sets them::

    LONGVILA_COORDINATOR=host:port  LONGVILA_NUM_PROCESSES=N  LONGVILA_PROCESS_ID=i
    [LONGVILA_LOCAL_DEVICE_IDS=0,1,2,3]

(``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` are
read as well.)  Under SLURM (``SLURM_JOB_ID`` and more than one task) JAX
finds everything itself from the SLURM variables.  With none of these the
run is a single process and nothing is started.

On CPU, cross-process collectives need ``jax_cpu_collectives_implementation
= gloo``; it is set here when the platform is CPU.
"""

from __future__ import annotations

import os

_STARTED = False


def _env(*names):
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def maybe_initialize() -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes several processes.

    Returns True when a multi-process run was set up (or already was).
    """
    global _STARTED
    if _STARTED:
        return True
    import jax

    coordinator = _env("LONGVILA_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    num = _env("LONGVILA_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    pid = _env("LONGVILA_PROCESS_ID", "JAX_PROCESS_ID")
    slurm = os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if not coordinator and not slurm:
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        missing = [n for n, v in (("LONGVILA_NUM_PROCESSES", num), ("LONGVILA_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ValueError(f"LONGVILA_COORDINATOR={coordinator} is set but {missing} are not; set all three "
                             f"(or use scripts/launch_local.sh)")
        local = _env("LONGVILA_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num), process_id=int(pid),
                                   local_device_ids=[int(i) for i in local.split(",")] if local else None)
    else:
        jax.distributed.initialize()  # SLURM: coordinator, counts and ids from the SLURM variables
    _STARTED = True
    return True
