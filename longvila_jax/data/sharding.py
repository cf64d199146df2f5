"""Which share of the data a process reads.

The batch is sharded over ``("data", "fsdp")`` and each sequence over
``("ring", "ulysses")``. When a sequence-parallel group spans several
processes (the ring across hosts), all of them must build the *same* rows,
so they read the same share: processes are grouped by the batch coordinates
(positions along the flattened ``data x fsdp`` axes) their devices hold, and
each group is one shard. Shard ``g`` holds the ``g``-th contiguous block of
batch coordinates, so its rows are rows ``[g*B, (g+1)*B)`` of the global
batch (``B`` = rows per process) and its frames the ``g``-th block of frames.

``Shard(index, count)``: the process reads records ``index, index + count, ...``
of the (shuffled) dataset; shards are disjoint and cover the dataset.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in [0, {self.count})")


def shard_from_process_grid(process_grid: np.ndarray, process_index: int, batch_axes: int = 2) -> Shard:
    """Shard of ``process_index`` given the process owning each device of the mesh.

    Args:
      process_grid: int array shaped like the mesh (``[data, fsdp, ring, ulysses]``),
        the owning process of every device.
      process_index: this process.
      batch_axes: how many leading axes shard the batch (2: ``data``, ``fsdp``).

    Raises ``ValueError`` when the processes do not split the batch coordinates
    into equal contiguous blocks (then no process could build its rows alone).
    """
    grid = np.asarray(process_grid)
    flat = grid.reshape(int(np.prod(grid.shape[:batch_axes])), -1)  # [batch coords, sequence devices]
    holds = {p: tuple(np.flatnonzero((flat == p).any(axis=1)).tolist()) for p in sorted(set(grid.ravel().tolist()))}
    if process_index not in holds:
        raise ValueError(f"process {process_index} owns no device of the mesh")
    owner: dict[int, tuple] = {}
    for coords in holds.values():
        for c in coords:
            if c in owner and owner[c] != coords:
                raise ValueError(f"batch coordinate {c} is held by process groups {owner[c]} and {coords}; "
                                 f"lay the mesh out so that processes sharing a batch coordinate hold the same "
                                 f"batch coordinates (whole sequence-parallel groups)")
            owner[c] = coords
    groups = sorted(set(holds.values()))
    size = len(groups[0])
    for g, coords in enumerate(groups):
        if coords != tuple(range(g * size, (g + 1) * size)):
            raise ValueError(f"process groups hold batch coordinates {groups}; each must hold an equal, "
                             f"contiguous block (order the mesh's devices by process)")
    return Shard(groups.index(holds[process_index]), len(groups))


def process_grid(mesh, batch_axes=("data", "fsdp")) -> tuple[np.ndarray, int]:
    """``(owning process of every device, batch axes first; number of batch axes)`` of a ``Mesh``."""
    names = list(mesh.axis_names)
    lead = [names.index(a) for a in batch_axes if a in names]
    rest = [i for i in range(len(names)) if i not in lead]
    grid = np.vectorize(lambda d: d.process_index)(mesh.devices).transpose(lead + rest)
    return grid, len(lead)


def shard_from_mesh(mesh, batch_axes=("data", "fsdp")) -> Shard:
    """This process's shard for a ``jax.sharding.Mesh`` whose batch is sharded over ``batch_axes``."""
    import jax

    grid, lead = process_grid(mesh, batch_axes)
    return shard_from_process_grid(grid, jax.process_index(), batch_axes=lead)


def shard_for_process() -> Shard:
    """``Shard(jax.process_index(), jax.process_count())``: one share per process (no cross-process SP)."""
    import jax

    return Shard(jax.process_index(), jax.process_count())


def frame_multiple_from_mesh(mesh, batch_axes=("data", "fsdp")) -> int:
    """Devices that encode one shard's frames (``DataConfig.frame_multiple``): all devices / shards."""
    return int(mesh.devices.size) // shard_from_mesh(mesh, batch_axes).count
