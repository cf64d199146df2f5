"""The benchmark scripts' timing helpers: trace parsing and batch sizes, against hand-made cases."""

import gzip
import json
import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))

import bench_attention  # noqa: E402
import trace_summary  # noqa: E402


def _write_trace(directory: pathlib.Path, events):
    path = directory / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def _meta(kind, pid, name, tid=0):
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def test_device_events_keep_stream_lines_and_timeline_merges_overlaps(tmp_path):
    # device pid 2 has two streams and a derived "XLA Ops" line that repeats them; pid 1 is the host
    events = [_meta("process_name", 1, "/host:CPU"), _meta("process_name", 2, "/device:GPU:0"),
              _meta("thread_name", 2, "Stream #13", 13), _meta("thread_name", 2, "Stream #14", 14),
              _meta("thread_name", 2, "XLA Ops", 99),
              {"ph": "X", "pid": 2, "tid": 13, "name": "k1", "ts": 100.0, "dur": 50.0, "args": {"hlo_op": "fwd"}},
              {"ph": "X", "pid": 2, "tid": 14, "name": "k2", "ts": 120.0, "dur": 60.0, "args": {"hlo_op": "bwd"}},
              {"ph": "X", "pid": 2, "tid": 13, "name": "k3", "ts": 300.0, "dur": 10.0, "args": {}},
              {"ph": "X", "pid": 2, "tid": 99, "name": "fwd", "ts": 100.0, "dur": 50.0, "args": {"hlo_op": "fwd"}},
              {"ph": "X", "pid": 1, "tid": 5, "name": "dispatch", "ts": 0.0, "dur": 400.0, "args": {}}]
    _write_trace(tmp_path, events)
    found, on_device, lines = trace_summary.device_events(str(tmp_path))
    assert on_device and lines == ["Stream #13", "Stream #14", "XLA Ops"]
    assert [e.name for e in found] == ["fwd", "bwd", "k3"]
    line = trace_summary.timeline(found)
    # busy: [100, 180] (two overlapping kernels) and [300, 310]; one gap of 120 us
    assert line.span_us == pytest.approx(210.0)
    assert line.busy_us == pytest.approx(90.0)
    assert line.gaps_us == [pytest.approx(120.0)]
    ops, _ = trace_summary.device_ops(str(tmp_path))
    assert ops == {"fwd": [1, 50.0], "bwd": [1, 60.0], "k3": [1, 10.0]}


def test_timeline_of_nothing_is_empty():
    assert trace_summary.timeline([]) == trace_summary.Timeline(0.0, 0.0, [])


def test_batch_size_does_not_count_the_compile(monkeypatch):
    # a call whose first run is slow (a compile) and later runs fast must be batched, not timed once
    calls = []

    def fn():
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.6)
        return 0

    monkeypatch.setitem(bench_attention.TIMING, "mode", "async")
    repeats = bench_attention.batch_size(fn, budget_s=1.0)
    assert repeats == bench_attention.REPEATS
    assert len(calls) == 2


def test_batch_size_times_a_slow_call_once(monkeypatch):
    monkeypatch.setitem(bench_attention.TIMING, "mode", "async")
    assert bench_attention.batch_size(lambda: time.sleep(0.06), budget_s=0.1) == 0


def test_round_ratios_pair_each_round_with_the_anchor_sample_of_the_same_round():
    # a packed row (a quarter of the FLOPs) and a plain row against the anchor, with the clock slowing
    # every row by 2x in the second round: the paired ratios do not move, the ratio of medians would
    from types import SimpleNamespace

    anchor = SimpleNamespace(flops=4.0, times=([], [1.0, 2.0, 1.0]))
    plain = SimpleNamespace(flops=4.0, times=([], [0.8, 1.6, 1.0]))
    packed = SimpleNamespace(flops=1.0, times=([], [0.5, 1.0, 0.25]))
    assert bench_attention.round_ratios(plain, anchor) == pytest.approx([1.25, 1.25, 1.0])
    assert bench_attention.round_ratios(packed, anchor) == pytest.approx([0.5, 0.5, 1.0])
    assert bench_attention.round_ratios(anchor, anchor) == [] and bench_attention.round_ratios(plain, None) == []


def test_mask_layouts_and_their_cudnn_anchor():
    assert bench_attention.mask_layout("full") == ("full", "", 1)
    assert bench_attention.mask_layout("causal-packed4") == ("causal", "packed4", 4)
    assert bench_attention.anchor_mask("causal-packed4") == "causal"  # cuDNN cannot take segment ids
    assert bench_attention.anchor_mask("full-batch4") == "full-batch4"  # the same work, unpacked: cuDNN runs it
    for bad in ("causal-packed8", "sliding", "causal-batch4-x"):
        with pytest.raises(ValueError, match=repr(bad)):
            bench_attention.mask_layout(bad)
    bench_attention.check_length("causal", 257)  # one sample: any length
    bench_attention.check_length("full-batch4", 256, 1024)
    with pytest.raises(ValueError, match="multiple of 4, got 258"):
        bench_attention.check_length("causal-packed4", 256, 258)


def test_a_batched_row_runs_the_packed_rows_samples_as_batch_items():
    """The xla backend on 4 packed causal samples (segment ids, restarting positions) and on the same
    tensors as 4 batch items: the same attention, so out, dq, dk and dv agree once reshaped."""
    import jax
    import numpy as np

    length = 256
    key = jax.random.key(np.random.SeedSequence().entropy % 2**31)  # fresh inputs every run
    q, k, v, dout = (jax.random.normal(kk, (1, length, heads, bench_attention.HEAD_DIM), "bfloat16")
                     for kk, heads in zip(jax.random.split(key, 4), (4, 2, 2, 4)))
    packed, batched = (bench_attention.Row("xla", length, mask, (q, k, v, dout), 64, 64, budget_s=0.01).outputs()
                       for mask in ("causal-packed4", "causal-batch4"))
    assert batched[0].shape == (4, length // 4, 4, bench_attention.HEAD_DIM)
    for got, want in zip(batched, packed):
        np.testing.assert_allclose(np.asarray(got, np.float32).reshape(want.shape), np.asarray(want, np.float32),
                                   rtol=2e-2, atol=2e-2)
