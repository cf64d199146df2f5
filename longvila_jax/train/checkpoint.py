"""Training checkpoints with Orbax ``CheckpointManager``: model, optimizer, step, RNG and the data position.

One checkpoint (``<run>/checkpoints/<step>/``) holds four items:

* ``state``: ``{"params", "opt", "step", "rng", "frozen"}`` (the trainable
  parameters, their optimizer state, the step counter, the PRNG key and the
  parameters the stage does not train), sharded arrays;
* ``data``: the data iterator's state, one JSON file per process (grain's
  Orbax handler), so each process resumes its own shard exactly;
* ``meta``: JSON (the step, the config) for people and tools.

Saves are asynchronous (``enable_async_checkpointing``): ``save`` returns
once the arrays are copied off the devices and the files are written in the
background.  Orbax writes into a temporary folder and renames it when every
item is complete, so a save that dies half-way (SIGKILL, node failure) leaves
only a temporary folder that ``latest_step`` ignores and the next manager
cleans up: the last good checkpoint is never touched.  ``keep`` bounds how
many finished checkpoints stay on disk.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """``save(step, state, frozen, data_source, meta)`` / ``restore(...)`` over a ``CheckpointManager``."""

    def __init__(self, directory, *, keep: int = 2, async_save: bool = True):
        from longvila_jax.data.checkpoint import data_checkpoint_handler

        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": data_checkpoint_handler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, frozen, data_source, meta: dict) -> bool:
        """Starts saving checkpoint ``step`` (returns at once with async saving)."""
        import grain

        args = ocp.args.Composite(state=ocp.args.StandardSave({**state, "frozen": frozen}),
                                  data=grain.checkpoint.CheckpointSave(data_source), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state, abstract_frozen, data_source):
        """Restores checkpoint ``step`` into arrays shaped and sharded like the abstract trees
        (``jax.ShapeDtypeStruct`` with shardings) and sets ``data_source``'s position; returns
        ``(state, frozen, meta)``."""
        import grain

        args = ocp.args.Composite(state=ocp.args.StandardRestore({**abstract_state, "frozen": abstract_frozen}),
                                  data=grain.checkpoint.CheckpointRestore(data_source),
                                  meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        state = dict(restored.state)
        frozen = state.pop("frozen", None) or {}
        return state, frozen, restored.meta

    def wait(self) -> None:
        """Blocks until the background save (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    """``jax.ShapeDtypeStruct`` leaves with the given shardings (a restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
