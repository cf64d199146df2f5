"""scripts/bench_mosaic_grid.py on CPU (interpret mode: conftest's ``interpreted_mosaic``): every variant it
times, built as the GPU run builds it, computes the right thing (its forward+backward rows once called
``attention_fn`` with a stale signature, unnoticed because the script only ever ran on a GPU)."""

import os
import sys

import jax

from longvila_jax.kernels.reference import reference_vjp
from longvila_jax.kernels.testing import rel_err

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import bench_mosaic_grid  # noqa: E402
import bench_mosaic_kernels  # noqa: E402

TOL = 1e-2  # bf16 inputs against a float32 reference (relative, whole tensor)


def test_every_grid_bench_variant_matches_the_reference(rng, monkeypatch, interpreted_mosaic):
    """256 tokens in 4 packed causal samples: the forward and dQ kernels alone on both grids, dQ on 64-key
    blocks per block, persistent and prefetching, and the whole forward+backward under each of the script's
    settings, against a dense float32 attention on the same (fresh) inputs."""
    built = {}

    def case(seq_len, causal, n_segments, _key):
        built["case"] = bench_mosaic_kernels.case(seq_len, causal, n_segments,
                                                  jax.random.key(int(rng.integers(2 ** 31))))
        return built["case"]

    monkeypatch.setattr(bench_mosaic_grid, "case", case)
    runs, _ = bench_mosaic_grid.variants(256, "causal-packed4")
    (q, k, v, (seg, _, pos, _)), (_, _, _, dout, *_), _ = built["case"]

    ref_out, ref_lse, ref_grads = reference_vjp(q, k, v, dout, q_segment_ids=seg, kv_segment_ids=seg,
                                                q_positions=pos, kv_positions=pos, causal=True)
    names = set()
    for name, grid, _, fn, args in runs:
        names.add((name, grid))
        result = jax.block_until_ready(fn(*args))
        if name == "forward kernel":
            assert rel_err(result[0], ref_out) <= TOL, (name, grid)
            assert rel_err(result[1], ref_lse) <= TOL, (name, grid)
        elif name.startswith("dQ kernel"):
            assert rel_err(result, ref_grads[0]) <= TOL, (name, grid)
        else:
            for part, grad, ref in zip("qkv", result, ref_grads):
                assert rel_err(grad, ref) <= TOL, (name, grid, "d" + part)
    assert ("dQ kernel, 64-key blocks, next item", "persistent") in names
    assert {grid for name, grid in names if name == "forward+backward"} == set(bench_mosaic_grid.CONFIGS)
