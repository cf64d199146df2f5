"""Bad input: the reasons a sample is skipped, the skip record and its counter.

Every bad sample is *skipped, counted and logged*, never silently dropped:

* Preparing a sample (decode, tokenize) never raises for bad input; it returns
  a :class:`Skip` record naming the path, the reason and a message.
* The packer hands every :class:`Skip` to a :class:`SkipCounter`, which counts
  it per reason (per epoch and in total), logs each ``(path, reason)`` once,
  and with ``strict=True`` raises :class:`BadSampleError` on the first one.
"""

from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger("longvila_jax.data")

# The reasons a sample is skipped, in the order reports print them.
MISSING = "missing"  # the media file does not exist
CORRUPT = "corrupt"  # the file cannot be opened or has no video stream / is not an image
TRUNCATED = "truncated"  # the stream ends (or breaks) before the frames its header announced
TOO_FEW_FRAMES = "too_few_frames"  # the video holds fewer frames than the sampler asks for
EMPTY_CONVERSATION = "empty_conversation"  # no conversation, or no assistant turn with text
TOO_LONG = "too_long"  # more tokens (or frames) than one row of the budget holds
BAD_RECORD = "bad_record"  # a manifest record that is not a valid sample (schema)
REASONS = (MISSING, CORRUPT, TRUNCATED, TOO_FEW_FRAMES, EMPTY_CONVERSATION, TOO_LONG, BAD_RECORD)

_HINTS = {
    MISSING: "check the manifest path against the data root",
    CORRUPT: "re-encode or remove the file",
    TRUNCATED: "the file was cut short (incomplete copy or download); copy it again",
    TOO_FEW_FRAMES: "lower num_frames, use an fps cap, or remove the sample",
    EMPTY_CONVERSATION: "give the sample at least one assistant turn with text",
    TOO_LONG: "raise the token budget (seq_len), lower num_frames, or split the sample",
    BAD_RECORD: "fix the manifest record",
}


class BadSampleError(ValueError):
    """A bad sample under ``strict=True``; the message names the path, the reason and what to do."""

    def __init__(self, path: str, reason: str, message: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}: {message} ({_HINTS.get(reason, 'fix the input')})")


@dataclasses.dataclass(frozen=True)
class Skip:
    """A sample that was not used: ``path`` (or record id), ``reason`` (one of ``REASONS``), ``message``."""

    path: str
    reason: str
    message: str
    epoch: int = 0

    def error(self) -> BadSampleError:
        return BadSampleError(self.path, self.reason, self.message)


class SkipCounter:
    """Counts skipped samples per reason, per epoch and in total; logs each ``(path, reason)`` once.

    ``state()``/``load()`` give a JSON-able snapshot (for the iterator's checkpoint);
    the set of already logged paths is not part of it (a restored run logs again).
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.total = {r: 0 for r in REASONS}
        self.epoch = {r: 0 for r in REASONS}
        self.current_epoch = 0
        self._logged: set[tuple[str, str]] = set()

    def add(self, skip: Skip, *, log: bool = True) -> None:
        if self.strict:
            raise skip.error()
        self.total[skip.reason] = self.total.get(skip.reason, 0) + 1
        self.epoch[skip.reason] = self.epoch.get(skip.reason, 0) + 1
        key = (skip.path, skip.reason)
        if log and key not in self._logged:
            self._logged.add(key)
            logger.warning("skipping %s: %s: %s (%s)", skip.path, skip.reason, skip.message,
                           _HINTS.get(skip.reason, ""))

    def new_epoch(self, epoch: int) -> None:
        """Reports the counts of every finished epoch before ``epoch`` and starts counting ``epoch``."""
        while self.current_epoch < epoch:
            level = logging.WARNING if any(self.epoch.values()) else logging.INFO
            logger.log(level, "data epoch %d finished: %s", self.current_epoch, self.report(self.epoch))
            self.epoch = {r: 0 for r in REASONS}
            self.current_epoch += 1

    def finish(self) -> None:
        """Reports the last epoch (the data ran out)."""
        level = logging.WARNING if any(self.epoch.values()) else logging.INFO
        logger.log(level, "data epoch %d finished (end of data): %s", self.current_epoch, self.report(self.epoch))

    @staticmethod
    def report(counts: dict) -> str:
        bad = {r: n for r, n in counts.items() if n}
        return "no sample skipped" if not bad else "skipped " + ", ".join(f"{r}={n}" for r, n in bad.items())

    def metrics(self) -> dict[str, int]:
        """``{"skipped/<reason>": total count}`` for every reason, and ``"skipped/all"``."""
        out = {f"skipped/{r}": int(n) for r, n in self.total.items()}
        out["skipped/all"] = int(sum(self.total.values()))
        return out

    def state(self) -> dict:
        return {"total": dict(self.total), "epoch": dict(self.epoch), "current_epoch": self.current_epoch}

    def load(self, state: dict) -> None:
        self.total = {r: int(state["total"].get(r, 0)) for r in REASONS}
        self.epoch = {r: int(state["epoch"].get(r, 0)) for r in REASONS}
        self.current_epoch = int(state["current_epoch"])
