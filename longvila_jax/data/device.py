"""A process-local step -> global ``jax.Array``s on the mesh (multi-host safe).

Each process (or group of processes sharing sequence-parallel groups) holds
the ``B`` rows and ``F`` frames of its shard ``g`` of ``G``. Globally:

* per-token arrays ``[G*B, S]``, sharded ``P(("data", "fsdp"), ("ring", "ulysses"))``
  (logical ``("batch", "seq")``); shard ``g`` owns rows ``[g*B, (g+1)*B)``;
* ``frames`` ``[G*F, H, W, 3]`` and ``frame_valid`` ``[G*F]``, sharded over
  every mesh axis (logical ``"frames"``): shard ``g``'s frames are block ``g``
  and land on its own devices (``F`` a multiple of the devices per shard);
* ``frame_index`` is shifted by ``g*F`` so it indexes the global frames.

Only the slices each local device holds are copied (``make_array_from_callback``).
"""

from __future__ import annotations

import numpy as np

from longvila_jax.data.sharding import Shard, shard_from_mesh

TOKEN_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token",
              "natural_index")


def batch_shardings(mesh) -> dict:
    """``NamedSharding`` per key of a step (token arrays, ``frames``, ``frame_valid``)."""
    from jax.sharding import NamedSharding

    from longvila_jax.sharding import mesh_axes_for

    tokens = NamedSharding(mesh, mesh_axes_for(("batch", "seq"), mesh))
    out = {key: tokens for key in TOKEN_KEYS}
    out["frames"] = NamedSharding(mesh, mesh_axes_for(("frames", None, None, None), mesh))
    out["frame_valid"] = NamedSharding(mesh, mesh_axes_for(("frames",), mesh))
    return out


def put_batch(batch: dict, mesh, shard: Shard | None = None) -> dict:
    """Global arrays of a step (see module doc); ``metrics`` stays a host dict."""
    import jax

    shard = shard or shard_from_mesh(mesh)
    shardings = batch_shardings(mesh)
    rows, frames = batch["input_ids"].shape[0], batch["frames"].shape[0]
    out = {}
    for key, sharding in shardings.items():
        local = batch[key]
        block = rows if key in TOKEN_KEYS else frames
        if key == "frame_index":
            local = np.where(local >= 0, local + shard.index * frames, -1).astype(local.dtype)
        global_shape = (block * shard.count,) + local.shape[1:]

        def piece(index, local=local, block=block, key=key):
            lead = index[0]
            start = (lead.start or 0) - shard.index * block
            stop = (block * shard.count if lead.stop is None else lead.stop) - shard.index * block
            if start < 0 or stop > block:
                raise ValueError(f"{key}: device slice {index} lies outside shard {shard.index}'s block; "
                                 f"the mesh's devices are not laid out by shard (see sharding.shard_from_mesh)")
            return local[(slice(start, stop),) + tuple(index[1:])]

        out[key] = jax.make_array_from_callback(global_shape, sharding, piece)
    out["metrics"] = batch.get("metrics", {})
    return out
