"""Needle accuracy: which answer does the model find most likely for each synthetic needle video?

Every needle question has a closed set of answers (10 digits, 6 colours, 4
shapes; ``data.synthetic``).  For each video the model scores every
candidate answer by the summed log-probability of the assistant turn's
tokens (the answer and the end-of-turn token) after the question; the
prediction is the best-scoring candidate.  Chance is the mean of
``1 / candidates`` over the questions.

All candidate conversations of a video share its frames: the rows of an
evaluation batch point into one frames array through the frame plan
(``frame_index``/``frame_token``), the mechanism MM-SP uses, so each video
is encoded once per batch.  Rows are put in the mesh's device order and
scored sharded like a training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from longvila_jax.data import synthetic
from longvila_jax.data.layout import device_order_row, round_up
from longvila_jax.data.packing import pack_row
from longvila_jax.train.data_setup import to_global
from longvila_jax.train.forward import row_losses

CANDIDATES = {"digit": [str(d) for d in range(10)], "colour": list(synthetic.COLOURS), "shape": list(synthetic.SHAPES)}


def load_examples(manifest, tokenizer, model_config, num_frames: int) -> list[dict]:
    """Each record of a needle manifest -> ``{"frames", "candidates" [(ids, labels)], "answer", "kind"}``."""
    from longvila_jax.data.text import ConversationTokenizer
    from longvila_jax.data.video import FrameSpec, load_video

    conv = ConversationTokenizer(tokenizer, image_token_id=model_config.image_token_id,
                                 tokens_per_frame=model_config.tokens_per_frame)
    spec = FrameSpec(num_frames=num_frames, image_size=model_config.vision.image_size)
    root = Path(manifest).parent
    examples = []
    for line in Path(manifest).read_text().splitlines():
        record = json.loads(line)
        frames = load_video(str(root / record["video"]), spec)
        question = record["conversations"][0]
        options = CANDIDATES[record["kind"]]
        candidates = [conv([question, {"from": "gpt", "value": option}], frames.shape[0]) for option in options]
        examples.append({"frames": frames, "candidates": candidates, "answer": options.index(record["answer"]),
                         "kind": record["kind"]})
    return examples


def _batches(examples, model_config, *, rows: int, ring_size: int, frame_multiple: int):
    """Evaluation steps: each row one (video, candidate); all rows of a video share its frames."""
    tpf, image = model_config.tokens_per_frame, model_config.image_token_id
    seq_len = max(len(ids) for ex in examples for ids, _ in ex["candidates"])
    seq_len = round_up(seq_len, 2 * ring_size * 8)
    jobs = [(e, c) for e, ex in enumerate(examples) for c in range(len(ex["candidates"]))]
    videos_per_batch = -(-rows // min(len(ex["candidates"]) for ex in examples)) + 1
    frames_per_video = examples[0]["frames"].shape[0]
    capacity = round_up(videos_per_batch * frames_per_video, frame_multiple)
    for start in range(0, len(jobs), rows):
        chunk = jobs[start:start + rows]
        videos = list(dict.fromkeys(e for e, _ in chunk))
        base = {e: i * frames_per_video for i, e in enumerate(videos)}
        frames = np.zeros((capacity, *examples[0]["frames"].shape[1:]), np.float32)
        for e, offset in base.items():
            frames[offset:offset + frames_per_video] = examples[e]["frames"]
        ordered = []
        for e, c in chunk + [chunk[-1]] * (rows - len(chunk)):
            ids, labels = examples[e]["candidates"][c]
            row = pack_row([{"input_ids": ids, "label_mask": labels}], seq_len, image_token_id=image,
                           tokens_per_frame=tpf, frame_offset=base[e])
            ordered.append(device_order_row(row, ring_size))
        batch = {k: np.stack([r[k] for r in ordered]) for k in ordered[0] if k != "natural_index"}
        batch["frames"] = frames
        yield chunk, batch


def needle_accuracy(graphdef, params, frozen, examples, model_config, mesh, *, rows: int = 8,
                    vocab_chunk: int = 8192) -> dict:
    """``{"accuracy", "chance", "per_kind": {kind: accuracy}, "count"}`` of the model on ``examples``."""
    ring = mesh.shape.get("ring", 1)

    @jax.jit
    def score(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        return -row_losses(model, batch, mesh=mesh, vocab_chunk=vocab_chunk)

    scores = [np.full(len(ex["candidates"]), -np.inf) for ex in examples]
    for chunk, batch in _batches(examples, model_config, rows=rows, ring_size=ring, frame_multiple=mesh.size):
        global_batch = {k: v[0] for k, v in to_global({k: v[None] for k, v in batch.items()}, mesh).items()}
        with jax.set_mesh(mesh):
            values = np.asarray(jax.device_get(score(params, frozen, global_batch)))
        for (e, c), value in zip(chunk, values):
            scores[e][c] = value
    correct = [int(np.argmax(s) == ex["answer"]) for s, ex in zip(scores, examples)]
    kinds = sorted({ex["kind"] for ex in examples})
    per_kind = {k: float(np.mean([c for c, ex in zip(correct, examples) if ex["kind"] == k])) for k in kinds}
    chance = float(np.mean([1.0 / len(ex["candidates"]) for ex in examples]))
    return {"accuracy": float(np.mean(correct)), "chance": chance, "per_kind": per_kind, "count": len(examples)}
