"""V-NIAH: a needle frame in a video haystack, over a grid of haystack lengths and depths.

For every haystack length ``L`` (frames, 1 fps) and depth ``d`` in
``{0, 0.2, ..., 1.0}``, the needle's frame is inserted before haystack frame
``round(d * L)`` (0: first frame, L: after the last) and its question asked.
The haystack's frames and the needles are encoded once (``Generator.encode``)
and every trial splices the cached visual tokens: trial ``(L, d)`` sees
``hay[:i] + needle + hay[i:L]``.  The depths of one ``(L, needle)`` form one
batch; prefill is sequence-parallel over the generator's mesh.

Modes (``eval.scoring``): ``teacher`` (the prompt is followed by the answer;
the argmax over the answer span must decode to the answer) and ``generate``
(greedy generation must contain the answer).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from longvila_jax.data.video import normalize as normalize_pixels
from longvila_jax.eval import scoring
from longvila_jax.eval.needles import Needle
from longvila_jax.infer.errors import InputError
from longvila_jax.infer.prompt import video_prompt_ids, video_prompt_with_answer

DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MODES = ("teacher", "generate")


@dataclasses.dataclass(frozen=True)
class VNIAHConfig:
    """``lengths``: haystack frames per trial; ``depths`` in [0, 1]; ``mode``: teacher or generate;
    ``batch_tokens``: visual tokens per prefill batch (depths of one length and needle are batched up to it)."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...] = DEPTHS
    mode: str = "teacher"
    max_new_tokens: int = 16
    batch_tokens: int = 1 << 16

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1:
            raise InputError(f"--lengths must be positive frame counts, got {list(self.lengths)}")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise InputError(f"--depths must lie in [0, 1], got {list(self.depths)}")
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def needle_index(length: int, depth: float) -> int:
    """Where the needle goes among ``length`` haystack frames: before frame ``round(depth * length)``."""
    return int(round(depth * length))


def splice_needle(haystack, needle, length: int, depth: float):
    """Visual tokens ``[L + 1, T, E]``: ``haystack[:i]``, the needle ``[1, T, E]``, ``haystack[i:L]``."""
    i = needle_index(length, depth)
    return jnp.concatenate([haystack[:i], needle, haystack[i:length]], axis=0)


def _trial_record(length, depth, needle: Needle, prediction: str, correct: bool) -> dict:
    return dict(length=int(length), depth=float(depth), needle_frame=needle_index(length, depth),
                needle=needle.name, question=needle.question, answer=needle.answer, prediction=prediction,
                correct=bool(correct))


def _teacher_batch(chat, visual, length, needle: Needle, depths) -> list[tuple[str, bool]]:
    tok, image = chat.tokenizer, chat.model.config.image_token_id
    full, answer_len = video_prompt_with_answer(tok, needle.question, needle.answer, length + 1, image,
                                                system=chat.system)
    if answer_len < 1:
        raise InputError(f"needle {needle.name}: the answer {needle.answer!r} tokenizes to nothing")
    spliced_prompt = len(full) - answer_len - (length + 1) + (length + 1) * chat.model.config.tokens_per_frame
    span = scoring.answer_span_indices(spliced_prompt, answer_len)
    rows = [full] * len(depths)
    logits = chat.generator.prefill(rows, visual, query_index=np.tile(span, (len(depths), 1))).logits
    out = []
    for row_logits in np.asarray(logits):
        text = tok.decode(scoring.teacher_forced_prediction(row_logits).tolist(), skip_special_tokens=True)
        out.append((text, scoring.teacher_forced_correct(text, needle.answer)))
    return out


def _generate_batch(chat, visual, length, needle: Needle, depths, max_new_tokens) -> list[tuple[str, bool]]:
    prompt = video_prompt_ids(chat.tokenizer, needle.question, length + 1, chat.model.config.image_token_id,
                              system=chat.system)
    gen = chat.generator.generate([prompt] * len(depths), visual, max_new_tokens=max_new_tokens,
                                  stop_ids=chat.stop_ids)
    texts = [chat.decode(t) for t in gen.tokens]
    return [(text, scoring.generation_correct(text, needle.answer)) for text in texts]


def run_vniah(chat, haystack_frames: np.ndarray, needles: Sequence[Needle], config: VNIAHConfig, *,
              progress: bool = True) -> dict:
    """Runs every trial; returns ``{"config", "trials", "accuracy"}`` (see ``summarize``).

    ``chat``: a ``VideoChat`` (model, tokenizer, generator on its mesh);
    ``haystack_frames`` uint8 ``[n >= max(lengths), S, S, 3]``.
    """
    from tqdm.auto import tqdm

    longest = max(config.lengths)
    if haystack_frames.shape[0] < longest:
        raise InputError(f"the haystack holds {haystack_frames.shape[0]} frames, fewer than the longest haystack "
                         f"asked for ({longest}); give a longer haystack or shorter --lengths")
    if not needles:
        raise InputError("V-NIAH needs at least one needle")
    gen = chat.generator
    haystack = gen.encode(normalize_pixels(haystack_frames[:longest]))
    needle_tokens = gen.encode(normalize_pixels(np.stack([n.image for n in needles])))
    trials = []
    total = len(config.lengths) * len(config.depths) * len(needles)
    with tqdm(total=total, desc="V-NIAH trials", unit="trial", disable=not progress) as bar:
        for length in config.lengths:
            rows = max(1, config.batch_tokens // ((length + 1) * chat.model.config.tokens_per_frame))
            for j, needle in enumerate(needles):
                for start in range(0, len(config.depths), rows):
                    depths = config.depths[start:start + rows]
                    visual = jnp.concatenate([splice_needle(haystack, needle_tokens[j:j + 1], length, d)
                                              for d in depths])
                    if config.mode == "teacher":
                        results = _teacher_batch(chat, visual, length, needle, depths)
                    else:
                        results = _generate_batch(chat, visual, length, needle, depths, config.max_new_tokens)
                    for depth, (text, correct) in zip(depths, results):
                        trials.append(_trial_record(length, depth, needle, text, correct))
                    bar.update(len(depths))
    return dict(config=dict(lengths=list(config.lengths), depths=list(config.depths), mode=config.mode,
                            needles=[n.name for n in needles]),
                trials=trials, accuracy=summarize(trials, config))


def summarize(trials: list[dict], config: VNIAHConfig) -> dict:
    """Accuracy overall, per length, per depth, and the ``[depth, length]`` grid of the heatmap."""
    def mean(rows):
        return float(np.mean([t["correct"] for t in rows])) if rows else float("nan")

    grid = [[mean([t for t in trials if t["length"] == n and t["depth"] == d]) for n in config.lengths]
            for d in config.depths]
    return dict(overall=mean(trials),
                by_length={str(n): mean([t for t in trials if t["length"] == n]) for n in config.lengths},
                by_depth={f"{d:g}": mean([t for t in trials if t["depth"] == d]) for d in config.depths},
                grid=grid)
