"""The benchmark scripts' command lines, run on CPU with tiny shapes (the figures mean nothing here): each
runs to its end and prints or writes the table or records it promises, so that a script broken since its
last GPU run costs a test run, not device time. The attention benches use the xla backend; their Mosaic rows
have their own interpret-mode tests (test_bench_mosaic_*.py, test_gpu_next.py)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import plot_attention  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def run_script(name, *args, timeout=300, **env_vars):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
    done = subprocess.run([sys.executable, "-P", str(ROOT / "scripts" / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_bench_attention_writes_a_row_per_backend_and_mask(tmp_path):
    out = run_script("bench_attention.py", "--impls", "xla", "--seqs", "256", "--masks",
                     "causal,causal-packed4,causal-batch4",
                     "--ceiling-size", "256", "--budget-s", "0.2", "--rounds", "2", "--block-q", "64",
                     "--block-k", "64", "--json", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "rows.png"))
    assert "jax-cudnn | 256 | causal | failed" in out  # the anchor row says why it is missing
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert "jax-cudnn | 256 | causal-batch4 | failed" in out  # cuDNN runs batched masks too (not on CPU)
    assert [(r["impl"], r["mask"]) for r in rows] == [("xla", "causal"), ("xla", "causal-packed4"),
                                                      ("xla", "causal-batch4")]
    plain, packed, batched = rows
    assert plain["ratio_own_plain"] == "-" and plain["ratio_own_plain_rounds"] == []
    for row in (packed, batched):  # a quarter of the plain mask's FLOPs: rate ratio = plain ms / (4 x own ms)
        assert float(row["ratio_own_plain"]) == round(row["fwd_bwd_tflops"] / plain["fwd_bwd_tflops"], 2)
        assert row["ratio_own_plain_rounds"] == pytest.approx(
            [p / (4 * m) for p, m in zip(plain["fwd_bwd_ms_samples"], row["fwd_bwd_ms_samples"])])
    assert all(r["samples"] == 2 and r["fwd_bwd_ms"] > 0 for r in rows)
    # one sample per round kept; no per-round ratios without the cuDNN anchor (it cannot run on CPU)
    assert all(len(r["fwd_bwd_ms_samples"]) == 2 and r["ratio_fwd_bwd_rounds"] == [] for r in rows)
    assert (tmp_path / "rows.png").read_bytes()[:8] == PNG
    # the plot script alone, from the JSON; and a run without rows is refused by name
    again = run_script("plot_attention.py", str(tmp_path / "rows.json"), "-o", str(tmp_path / "again.png"))
    assert again.strip().endswith("again.png") and (tmp_path / "again.png").read_bytes()[:8] == PNG
    (tmp_path / "empty.json").write_text(json.dumps(dict(device="cpu", jax="0", rows=[])))
    with pytest.raises(ValueError, match="no rows to plot"):
        plot_attention.plot_rows(json.loads((tmp_path / "empty.json").read_text()), tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"a row lacks \['fwd_bwd_tflops'"):
        plot_attention.plot_rows(dict(rows=[dict(impl="xla", seq=1, mask="causal", ratio_fwd_bwd="-",
                                                 ratio_own_plain="-")]), tmp_path / "bad.png")


def test_profile_attention_prints_the_step_op_by_op(tmp_path):
    out = run_script("profile_attention.py", "--impl", "xla", "--seq", "64", "--mask", "causal-packed4",
                     "--steps", "2", "--top", "3", "--trace-dir", str(tmp_path / "trace"), "--dump-hlo",
                     str(tmp_path / "step.hlo"))
    ops = table_rows(out)
    assert ops[0] == "| op | calls/step | us/step | share |" and len(ops) == 1 + 3 + 1
    total = re.match(r"\| all (\d+) ops \| [\d.]+ \| ([\d.]+) \| 100% \|", ops[-1])
    assert total and int(total.group(1)) >= 3 and float(total.group(2)) > 0
    assert "HloModule" in (tmp_path / "step.hlo").read_text()
    assert list((tmp_path / "trace").rglob("*.json.gz"))
    # the same samples as 4 batch items: the step's HLO takes [4, 16, H, D] tensors and no ids
    run_script("profile_attention.py", "--impl", "xla", "--seq", "64", "--mask", "causal-batch4", "--steps", "1",
               "--top", "1", "--dump-hlo", str(tmp_path / "batched.hlo"))
    entry = next(line for line in (tmp_path / "batched.hlo").read_text().splitlines() if line.startswith("ENTRY"))
    assert "bf16[4,16,32,128]" in entry and "s32[" not in entry


def test_power_attention_alternates_the_backends_round_by_round():
    # the xla backend named twice stands for two backends; on CPU there is no nvidia-smi to read
    out = run_script("power_attention.py", "--impls", "xla,xla", "--seq", "128", "--mask", "causal-packed4",
                     "--seconds", "0.2", "--rounds", "2", "--sample-s", "0.05")
    rows = [row.split(" | ") for row in table_rows(out)[1:]]
    assert [(r[0], r[1]) for r in rows] == [("| xla", "1"), ("| xla", "1"), ("| xla", "2"), ("| xla", "2")]
    for r in rows:
        tflops, ms = float(r[2]), float(r[3])
        assert tflops > 0 and ms > 0
        # 4 samples of 32 causal tokens, Hq 32, D 128: fwd+bwd = 3.5 x forward FLOPs, rate = FLOPs / time (both
        # printed to 4 digits)
        assert tflops == pytest.approx(3.5 * 4 * 32 * 32 * 32 * 128 * 4 / 2 / (ms * 1e-3) / 1e12, rel=2e-3)
        assert r[4:7] == ["n/a"] * 3
    with pytest.raises(AssertionError, match="bench mask 'causal-packed3'"):
        run_script("power_attention.py", "--impls", "xla", "--seq", "128", "--mask", "causal-packed3")


def test_power_attention_reads_the_clock_and_power(tmp_path):
    # a stand-in nvidia-smi that answers as an H100 at its power cap does
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '1545, 698.12, 61, 0x0000000000000004'\n")
    fake.chmod(0o755)
    out = run_script("power_attention.py", "--impls", "xla", "--seq", "128", "--mask", "causal", "--seconds", "0.3",
                     "--rounds", "1", "--sample-s", "0.05", PATH=f"{tmp_path}:{os.environ['PATH']}")
    (row,) = [r.split(" | ") for r in table_rows(out)[1:]]
    assert row[4:6] == ["1545", "698"] and int(row[7]) >= 1 and row[8].startswith("0x0000000000000004")
    assert float(row[6]) == pytest.approx(float(row[2]) / 1.545, rel=2e-3)  # TFLOP/s per GHz


def test_bench_row_stats_times_each_form():
    out = run_script("bench_row_stats.py", "--seqs", "256", "--steps", "2")
    forms = [row.split(" | ")[1] for row in table_rows(out)[1:]]
    assert forms == ["fused", "kept apart", "row sum only"]


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_bench_sp_times_ring_and_ulysses_against_the_one_device_kernel():
    out = run_script("bench_sp.py", "--seqs", "512", "--heads", "4/2", "--schemes", "ring", "ulysses", "--impl",
                     "xla", "--iters", "1", "--warmup", "1", "--skip-torch",
                     XLA_FLAGS="--xla_force_host_platform_device_count=2")
    records = {r["impl"]: r for r in json_lines(out)}
    for scheme in ("sp-ring", "sp-ulysses"):
        assert records[scheme]["world"] == 2 and records[scheme]["S"] == 512 and records[scheme]["tflops_per_gpu"] > 0
    assert records["kernel-1gpu"]["S"] == 256  # the per-device share, the ratio's denominator
    assert "cuDNN" in records["jax-cudnn-1gpu"]["error"]  # the anchor says why it is missing on CPU
    assert re.search(r"^sp-ring\s+512\s+4/2\s", out, re.M) and re.search(r"^sp-ulysses\s+512\s+4/2\s", out, re.M)


def test_bench_train_records_a_step_of_the_tiny_model(tmp_path):
    run_script("bench_train.py", "--preset", "tiny", "--seq", "512", "--frames", "4", "--steps", "2", "--only",
               "main", "--remats", "full", "--attn-impl", "xla", "--anchor-size", "256", OUT=str(tmp_path),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    results = json.loads((tmp_path / "bench_train.json").read_text())
    assert results["gpus"] == 2 and results["anchor_matmul_tflops"] > 0 and results["sweep"] == []
    (step,) = results["main"]
    assert (step["seq"], step["remat"], step["ulysses"]) == (512, "full", 2)
    assert step["tokens_per_s"] > 0 and 0 < step["loss"] < 20


def test_bench_generate_records_prefill_and_decode(tmp_path):
    results = tmp_path / "generate.json"
    out = run_script("bench_generate.py", "--preset", "tiny", "--frames", "16", "--new-tokens", "8", "--parts",
                     "1gpu,report", "--results", str(results))
    record = json.loads(results.read_text())["1gpu"]
    assert record["frames"] == 16 and record["new_tokens"] == 8 and record["decode_tok_s"] > 0
    assert 0 < record["vision_s"] <= record["ttft_s"]
    assert re.search(r"^1gpu\s+16 frames, \d+ tokens: TTFT", out, re.M)


def test_bench_data_measures_decode_and_the_pipeline(tmp_path):
    run_script("bench_data.py", "--videos", "2", "--width", "128", "--height", "96", "--seconds", "2",
               "--num-frames", "4", "--image-size", "64", "--min-seconds", "1", "--threads", "1", "--workdir",
               str(tmp_path / "videos"), "--json", str(tmp_path / "data.json"))
    results = json.loads((tmp_path / "data.json").read_text())
    assert (results["num_frames"], results["image_size"], results["pipeline_threads"]) == (4, 64, 1)
    assert results["frames_per_s_per_core"] > 0 and results["pipeline_frames_per_s"] > 0
    # sampling 4 of 60 frames seeks and decodes more than it keeps: at least one decoded frame per kept one
    assert results["decoded_per_sampled_frame"] >= 1
    assert isinstance(results["keeps_up_on_allowed_cores"], bool)


def test_measure_convert_memory_reports_the_peak_ratio(tmp_path):
    out = run_script("measure_convert_memory.py", "--workdir", str(tmp_path), "--hidden", "64", "--intermediate",
                     "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--vocab", "256")
    ratio = re.search(r"\(peak - baseline\) / checkpoint = ([\d.]+)x", out)
    assert ratio and float(ratio.group(1)) >= 0


def test_anchor_sample_length_times_each_layout_against_its_own_plain_row(tmp_path):
    pytest.importorskip("torch")
    run_script("anchor_sample_length.py", "--device", "cpu", "--impls", "math", "--seqs", "128", "--samples", "4",
               "--rounds", "2", "--budget-s", "0.02", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
               "--json", str(tmp_path / "samples.json"))
    rows = json.loads((tmp_path / "samples.json").read_text())["rows"]
    assert [(r["impl"], r["layout"], r["samples"]) for r in rows] == [("math", "plain", 1), ("math", "batch", 4)]
    plain, batch = rows
    # each layout's first sample against a float32 causal attention of those tokens alone
    assert all(r["rel_err"] < 1e-5 for r in rows)
    # the batch holds a quarter of the plain row's FLOPs: its rate ratio is plain ms / (4 x its ms)
    assert batch["own_plain_rounds"] == pytest.approx(
        [p / (4 * m) for p, m in zip(plain["fwd_bwd_ms_samples"], batch["fwd_bwd_ms_samples"])])
    assert plain["own_plain"] is None and len(batch["fwd_bwd_ms_samples"]) == 2
    with pytest.raises(AssertionError, match="do not split into 3 samples"):
        run_script("anchor_sample_length.py", "--device", "cpu", "--impls", "math", "--seqs", "128", "--samples",
                   "3")
