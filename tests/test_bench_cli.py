"""The GPU benchmark scripts' command lines, run on CPU with the xla backend and tiny shapes (the figures
mean nothing here): each runs to its end and prints or writes the table it promises. The Mosaic rows have
their own interpret-mode tests (test_bench_mosaic_*.py, test_gpu_next.py)."""

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


def run_script(name, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-P", str(ROOT / "scripts" / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_bench_attention_writes_a_row_per_backend_and_mask(tmp_path):
    out = run_script("bench_attention.py", "--impls", "xla", "--seqs", "256", "--masks", "causal,causal-packed4",
                     "--ceiling-size", "256", "--budget-s", "0.2", "--rounds", "2", "--block-q", "64",
                     "--block-k", "64", "--json", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "rows.png"))
    assert "jax-cudnn | 256 | causal | failed" in out  # the anchor row says why it is missing
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["impl"], r["mask"]) for r in rows] == [("xla", "causal"), ("xla", "causal-packed4")]
    plain, packed = rows
    assert plain["ratio_own_plain"] == "-"
    assert float(packed["ratio_own_plain"]) == round(packed["fwd_bwd_tflops"] / plain["fwd_bwd_tflops"], 2)
    assert all(r["samples"] == 2 and r["fwd_bwd_ms"] > 0 for r in rows)
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


def test_bench_row_stats_times_each_form():
    out = run_script("bench_row_stats.py", "--seqs", "256", "--steps", "2")
    forms = [row.split(" | ")[1] for row in table_rows(out)[1:]]
    assert forms == ["fused", "kept apart", "row sum only"]
