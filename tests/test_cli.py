"""The console script: help lists the subcommands; convert round-trips a folder; bad paths fail clearly."""

import subprocess
import sys

import numpy as np

import hf_builders as hb
from longvila_jax.cli import main
from longvila_jax.convert.safetensors_io import open_folder


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "longvila_jax.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "convert" in out.stdout and "demo" in out.stdout


def test_convert_both_ways(tmp_path, seed, capsys):
    hb.write_vila(tmp_path / "hf", hb.llama_config(), hb.siglip_config(), "mlp_downsample", seed)
    assert main(["convert", "hf-to-orbax", str(tmp_path / "hf"), str(tmp_path / "orbax")]) == 0
    assert main(["convert", "orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "back")]) == 0
    for part in ("llm", "vision_tower", "mm_projector"):
        a, b = open_folder(tmp_path / "hf" / part), open_folder(tmp_path / "back" / part)
        for key in a.keys():
            np.testing.assert_array_equal(a.read(key), b.read(key))
    assert "wrote LongVILA" in capsys.readouterr().out


def test_convert_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "hf-to-orbax", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing: checkpoint folder does not exist" in capsys.readouterr().err
