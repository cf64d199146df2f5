"""Errors of checkpoint conversion; every message names the file, the key and what to do."""


class CheckpointError(ValueError):
    """A checkpoint on disk cannot be read or does not match its configuration."""
