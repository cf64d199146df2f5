"""The grain pipeline: bad input skipped and counted, exact resume, disjoint process shares."""

import json
import logging

import numpy as np
import pytest

from longvila_jax.data import errors, synthetic
from longvila_jax.data.checkpoint import data_checkpoint_handler, restore_args, save_args
from longvila_jax.data.pipeline import DataConfig, build_dataset
from longvila_jax.data.sharding import Shard, shard_from_process_grid
from longvila_jax.data.sources import ManifestSource, TextSource
from longvila_jax.data.toy_tokenizer import build_toy_tokenizer
from longvila_jax.data.video import FrameSpec

FRAMES = FrameSpec(num_frames=4, image_size=16)


@pytest.fixture(scope="module")
def tokenizer():
    return build_toy_tokenizer("chatml")


@pytest.fixture(scope="module")
def needles(tmp_path_factory):
    root = tmp_path_factory.mktemp("needles")
    return synthetic.make_needle_dataset(root, 10, seed=3, num_frames=24, size=32, progress=False)


def _config(**kw):
    base = dict(seq_len=128, batch_size=2, ring_size=2, frames=FRAMES, max_frames_per_row=8, num_epochs=1,
                num_threads=2, shard=Shard(0, 1), open_rows=3, shuffle=False)
    base.update(kw)
    return DataConfig(**base)


def _samples(batch):
    """The samples of a step as tuples of token ids, in natural order, one per (row, segment)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        natural = np.argsort(batch["natural_index"][r])
        ids, seg = batch["input_ids"][r][natural], batch["segment_ids"][r][natural]
        for s in np.unique(seg[seg > 0]):
            out.append(tuple(ids[seg == s].tolist()))
    return out


def _bad_manifest(root, rng, reasons=None):
    lines = synthetic.bad_manifest_lines(root, rng, num_frames=FRAMES.num_frames)
    good = [json.dumps({"video": "full.mp4", "conversations": [
        {"from": "human", "value": f"<video>\nQuestion {i}?"}, {"from": "gpt", "value": f"answer {i}"}]})
        for i in range(5)]
    reasons = list(lines) if reasons is None else reasons
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(good[:2] + [lines[r] for r in reasons] + good[2:]) + "\n")
    return manifest, reasons


def test_bad_inputs_skipped_counted_and_logged(tmp_path, rng, tokenizer, caplog):
    manifest, reasons = _bad_manifest(tmp_path, rng)
    assert set(reasons) == set(errors.REASONS)
    caplog.set_level(logging.WARNING, logger="longvila_jax.data")
    batches = list(iter(build_dataset(ManifestSource(manifest), tokenizer, _config(num_epochs=2))))
    metrics = batches[-1]["metrics"]
    for reason in errors.REASONS:
        assert metrics[f"skipped/{reason}"] == 2, reason  # once per epoch
    assert metrics["skipped/all"] == 2 * len(errors.REASONS)
    # every good sample is there, twice (two epochs), none dropped
    samples = [s for b in batches for s in _samples(b)]
    assert len(samples) == 10 and len(set(samples)) == 5
    # each bad file logged once with its path and reason, although seen in both epochs
    messages = [r.getMessage() for r in caplog.records]
    for reason, name in [("missing", "missing.mp4"), ("corrupt", "corrupt.mp4"), ("truncated", "truncated.mp4"),
                         ("too_few_frames", "short.mp4")]:
        hits = [m for m in messages if f"skipping {tmp_path / name}: {reason}:" in m]
        assert len(hits) == 1, (reason, messages)
    assert sum("empty_conversation: the sample has no conversation" in m for m in messages) == 1
    assert sum("too_long:" in m and "exceed the row budget seq_len=128" in m for m in messages) == 1
    assert sum("bad_record: not valid JSON" in m and "manifest.jsonl:" in m for m in messages) == 1
    # the epoch reports
    assert sum(m.startswith("data epoch 0 finished: skipped missing=1, corrupt=1") for m in messages) == 1
    assert sum(m.startswith("data epoch 1 finished (end of data): skipped missing=1") for m in messages) == 1


@pytest.mark.parametrize("reason", errors.REASONS)
def test_strict_raises_on_first_bad_input(tmp_path, rng, tokenizer, reason):
    manifest, _ = _bad_manifest(tmp_path, rng, reasons=[reason])
    expected_where = {"missing": "missing.mp4", "corrupt": "corrupt.mp4", "truncated": "truncated.mp4",
                      "too_few_frames": "short.mp4", "empty_conversation": "manifest.jsonl:3",
                      "too_long": "manifest.jsonl:3", "bad_record": "manifest.jsonl:3"}[reason]
    with pytest.raises(errors.BadSampleError) as info:
        list(iter(build_dataset(ManifestSource(manifest), tokenizer, _config(strict=True))))
    assert info.value.reason == reason
    assert expected_where in str(info.value) and f": {reason}: " in str(info.value)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "metrics":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_gives_the_next_batches_exactly(tmp_path, rng, tokenizer, needles):
    # shuffled, repeated, with bad records, several open rows and a budget that leaves rows pending
    manifest, _ = _bad_manifest(tmp_path, rng, reasons=["missing", "too_long"])
    text = [json.loads(line) for line in open(needles)]
    with open(manifest, "a") as f:
        for record in text:
            record["video"] = str(needles.parent / record["video"])
            f.write(json.dumps(record) + "\n")
    config = _config(num_epochs=None, shuffle=True, seed=int(rng.integers(1000)), open_rows=3, batch_size=2,
                     max_frames_per_row=None, seq_len=160)  # rows close on tokens: some stay open
    source = ManifestSource(manifest, data_root=tmp_path)
    checkpoints = sorted(rng.choice(np.arange(1, 9), size=3, replace=False).tolist())
    reference = _take(iter(build_dataset(source, tokenizer, config)), checkpoints[-1] + 3)
    replayed = 0
    for steps in checkpoints:
        interrupted = iter(build_dataset(source, tokenizer, config))
        _take(interrupted, steps)
        state = json.loads(json.dumps(interrupted.get_state()))  # JSON round trip, as checkpoints store it
        interrupted.close()
        replayed += state["count"]  # records to re-read for the rows still open at the checkpoint
        resumed = iter(build_dataset(source, tokenizer, config))
        resumed.set_state(state)
        assert resumed.get_state() == state
        for want, got in zip(reference[steps:steps + 3], _take(resumed, 3)):
            _assert_same(want, got)
    assert replayed > 0  # the hard case (open rows refilled from re-read records) was exercised
    assert reference[-1]["metrics"]["skipped/all"] > 0  # the skip counts resumed too


def test_resume_through_orbax(tmp_path, rng, tokenizer):
    import orbax.checkpoint as ocp

    docs = [list(range(100 * i + 1, 100 * i + 1 + int(rng.integers(10, 90)))) for i in range(40)]
    config = _config(seq_len=128, num_epochs=None, shuffle=True, open_rows=4)
    source = TextSource(docs)
    reference = _take(iter(build_dataset(source, tokenizer, config)), 6)
    it = iter(build_dataset(source, tokenizer, config))
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",),
                               item_handlers={"data": data_checkpoint_handler()}) as manager:
        manager.save(3, args=ocp.args.Composite(data=save_args(it)))
        manager.wait_until_finished()
        fresh = iter(build_dataset(source, tokenizer, config))
        manager.restore(3, args=ocp.args.Composite(data=restore_args(fresh)))
    for want, got in zip(reference[3:], _take(fresh, 3)):
        _assert_same(want, got)


def test_two_processes_read_disjoint_shares_covering_the_data(rng, tokenizer):
    count = int(rng.integers(30, 60))
    docs = [[1000 + i] + [7] * int(rng.integers(3, 30)) for i in range(count)]
    seen, seed = [], int(rng.integers(1000))  # one seed: the processes run the same configuration
    for index in range(2):
        config = _config(shard=Shard(index, 2), shuffle=True, seed=seed, num_epochs=1)
        first = [s[0] for b in build_dataset(TextSource(docs), tokenizer, config) for s in _samples(b)]
        seen.append(first)
    a, b = set(seen[0]), set(seen[1])
    assert len(a) == len(seen[0]) and len(b) == len(seen[1])  # each document once
    assert not a & b and a | b == {1000 + i for i in range(count)}
    assert abs(len(a) - len(b)) <= 1


def test_sequence_parallel_groups_share_a_shard():
    # mesh [data=2, fsdp=1, ring=2, ulysses=2], 4 processes of 2 devices; the ring spans processes 2p, 2p+1
    grid = np.array([0, 0, 1, 1, 2, 2, 3, 3]).reshape(2, 1, 2, 2)
    shards = [shard_from_process_grid(grid, p) for p in range(4)]
    assert shards == [Shard(0, 2), Shard(0, 2), Shard(1, 2), Shard(1, 2)]
    # one process per batch coordinate: each its own shard
    grid = np.arange(4).repeat(2).reshape(4, 1, 2, 1)
    assert [shard_from_process_grid(grid, p) for p in range(4)] == [Shard(p, 4) for p in range(4)]
    # a process holding part of two SP groups that other processes also hold cannot be served
    grid = np.array([0, 1, 1, 2]).reshape(2, 1, 2, 1)
    with pytest.raises(ValueError, match=r"batch coordinate 0 is held by process groups \(0,\) and \(0, 1\)"):
        shard_from_process_grid(grid, 0)


def test_needle_pipeline_end_to_end(tokenizer, needles):
    config = _config(tokens_per_frame=2, ring_size=2, ulysses_size=2, frame_multiple=4, batch_size=2)
    batches = list(iter(build_dataset(ManifestSource(needles), tokenizer, config)))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    total = 0
    for batch in batches:
        assert batch["frames"].shape[0] % 4 == 0
        valid = int(batch["frame_valid"].sum())
        total += valid
        slots = batch["input_ids"] == image_id
        assert slots.sum() == 2 * valid  # two slots per frame
        assert set(batch["frame_index"][slots].tolist()) == set(range(valid))
        # frames are real decoded frames (normalized), padding frames are zero
        assert np.abs(batch["frames"][:valid]).max() > 0.5 and not batch["frames"][valid:].any()
        # answers are labels
        assert batch["metrics"]["label_tokens"] > 0
    assert total == 10 * FRAMES.num_frames


def test_buckets_shorten_a_sparse_last_step(rng, tokenizer):
    docs = [list(range(1, 1 + int(rng.integers(10, 30)))) for _ in range(2)]  # < 64 tokens in all
    config = _config(seq_len=256, seq_buckets=(64, 128), batch_size=2, num_epochs=1)
    (batch,) = list(iter(build_dataset(TextSource(docs), tokenizer, config)))
    assert batch["input_ids"].shape == (2, 64)
    assert sorted(map(len, _samples(batch))) == sorted(map(len, docs))
    with pytest.raises(ValueError, match="seq_len 90 must be a positive multiple of 4"):
        build_dataset(TextSource(docs), tokenizer, _config(seq_len=128, seq_buckets=(90,)))


def test_long_documents_split_into_rows(tokenizer):
    doc = list(range(1, 301))
    config = _config(seq_len=128, batch_size=1, num_epochs=1, open_rows=1)
    pieces = [s for b in build_dataset(TextSource([doc]), tokenizer, config) for s in _samples(b)]
    assert pieces == [tuple(doc[:128]), tuple(doc[128:256]), tuple(doc[256:])]
    skipped = list(build_dataset(TextSource([doc, doc[:20]]), tokenizer, _config(seq_len=128, split_long=False)))
    assert skipped[-1]["metrics"]["skipped/too_long"] == 1


@pytest.mark.slow
def test_resume_with_worker_processes(tmp_path, rng, tokenizer, needles):
    config = _config(num_epochs=None, shuffle=True, seed=int(rng.integers(1000)), worker_count=2,
                     max_frames_per_row=None, seq_len=160)
    source = ManifestSource(needles)
    first = iter(build_dataset(source, tokenizer, config))
    reference = _take(first, 6)
    first.close()
    it = iter(build_dataset(source, tokenizer, config))
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    resumed = iter(build_dataset(source, tokenizer, config))
    resumed.set_state(state)
    for want, got in zip(reference[3:], _take(resumed, 3)):
        _assert_same(want, got)
    resumed.close()
