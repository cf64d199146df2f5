"""Saving the data iterator's position with the model checkpoint (grain checkpointing through Orbax).

The pipeline's iterator is a grain ``DatasetIterator``: ``get_state()`` is a
small JSON-able dict, ``set_state()`` restores it exactly (see
``pipeline.PackIterator``). With Orbax, save it next to the model through
grain's handler, one file per process::

    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(path, item_names=("model", "data"),
                                    item_handlers={"data": data_checkpoint_handler()})
    manager.save(step, args=ocp.args.Composite(model=..., data=save_args(iterator)))
    manager.restore(step, args=ocp.args.Composite(model=..., data=restore_args(fresh_iterator)))

Without Orbax, :func:`save_state` / :func:`load_state` write and read the
same per-process JSON file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def data_checkpoint_handler():
    """Grain's Orbax ``CheckpointHandler`` for pipeline iterators (a file ``process_i-of-n.json`` each)."""
    import grain

    return grain.checkpoint.CheckpointHandler()


def save_args(iterator):
    """Orbax save args for ``iterator`` (``grain.checkpoint.CheckpointSave``)."""
    import grain

    return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator):
    """Orbax restore args: the state is loaded into ``iterator`` (a fresh one of the same pipeline)."""
    import grain

    return grain.checkpoint.CheckpointRestore(iterator)


def _state_file(directory: str | os.PathLike, process_index: int | None, process_count: int | None) -> Path:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    return Path(directory) / f"process_{process_index}-of-{process_count}.json"


def save_state(iterator, directory: str | os.PathLike, *, process_index: int | None = None,
               process_count: int | None = None) -> Path:
    """Writes ``iterator.get_state()`` to ``directory/process_<i>-of-<n>.json``; returns the file."""
    path = _state_file(directory, process_index, process_count)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(iterator.get_state(), indent=1))
    tmp.replace(path)
    return path


def load_state(iterator, directory: str | os.PathLike, *, process_index: int | None = None,
               process_count: int | None = None):
    """Restores ``iterator`` from :func:`save_state`'s file; returns the iterator."""
    path = _state_file(directory, process_index, process_count)
    if not path.exists():
        raise FileNotFoundError(f"no data iterator state {path}; was the checkpoint written with the same "
                                f"number of processes?")
    iterator.set_state(json.loads(path.read_text()))
    return iterator
