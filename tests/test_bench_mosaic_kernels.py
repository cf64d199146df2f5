"""scripts/bench_mosaic_kernels.py on CPU: every variant it times, built as the GPU run builds it (all its
options on), runs in interpret mode, and the ones meant to be right compute the right thing. The script
only ever ran on a GPU, where a stale call would cost a device run to find."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

from longvila_jax.kernels import mosaic_common
from longvila_jax.kernels.reference import reference_vjp
from longvila_jax.kernels.testing import rel_err

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import bench_mosaic_kernels  # noqa: E402

TOL = 1e-2  # bf16 inputs against a float32 reference (relative, whole tensor)
# what each variant returns and which parts of it must match the reference (None: wrong by design)
CHECKED = {
    "forward": ("out", "lse"), "forward kernel alone": ("out", "lse"),
    "dK/dV (split)": ("dk", "dv"), "dQ (split)": ("dq",),
    "fused dK/dV/dQ": ("dq", "dk", "dv"), "fused, red.global.add from registers": ("dq", "dk", "dv"),
    # the dQ write replaced: dq is wrong on a GPU (interpret mode's dQ path does not take the patch), dk and
    # dv stay right
    "fused, dQ only stored to SMEM": (None, "dk", "dv"), "fused, no dQ write": (None, "dk", "dv"),
    "fused, plain TMA store": (None, "dk", "dv"),
    "backward (lse, delta)": ("stats",),
}
# exp2 replaced by one FMA (timing only): these parts must differ from the reference, or the patch missed
ABLATED = {"forward kernel alone, exp2 as one FMA": ("out", "lse"), "dK/dV (split), exp2 as one FMA": ("dk", "dv"),
           "dQ (split), exp2 as one FMA": ("dq",)}


@pytest.mark.parametrize("mask", ["causal-packed4", "full"])
def test_every_kernel_bench_variant_runs_and_the_right_ones_match_the_reference(rng, mask, monkeypatch,
                                                                               interpreted_mosaic):
    """256 tokens (4 packed causal samples, or one full-mask sample), 2 query heads over 1; fresh inputs
    against a dense float32 attention. Every option of the script on with the packed samples; with the full
    mask the variants whose kernels or lists the mask changes (the patches of the dQ write, the ablations
    and the cut lists are the same code under either mask)."""
    seq_len, causal = 256, mask.startswith("causal")
    every = mask == "causal-packed4"
    built, case = {}, bench_mosaic_kernels.case

    def recorded_case(*args):
        built["case"] = case(*args)
        return built["case"]

    monkeypatch.setattr(bench_mosaic_kernels, "case", recorded_case)
    flops, found, split_grads = bench_mosaic_kernels.variants(
        seq_len, mask, key=jax.random.key(int(rng.integers(2 ** 31))), overheads=True,
        cta_overhead="0,1" if every else "", dq_write_variants=every, exp_ablation=every)
    assert flops > 0
    (q, k, v, (seg, _, pos, _)), (_, _, _, dout, *_), _ = built["case"]
    mask_args = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos, causal=causal)

    ref_out, ref_lse, ref_grads = reference_vjp(q, k, v, dout, **mask_args)
    ref = dict(out=ref_out, lse=ref_lse, **dict(zip(("dq", "dk", "dv"), ref_grads)))
    delta = jnp.einsum("bqhd,bqhd->bhq", ref_out, dout.astype(jnp.float32))
    ref["stats"] = jnp.stack([ref_lse * mosaic_common.LOG2E, delta], axis=2)
    for want, got in zip(("dq", "dk", "dv"), split_grads()):
        assert rel_err(got, ref[want]) <= TOL, ("split", want)

    names = [variant.name for variant in found]
    assert len(set(names)) == len(names)
    for variant in found:
        with bench_mosaic_kernels.patched(variant):
            result = jax.block_until_ready(bench_mosaic_kernels.jitted_call(variant)(*variant.args))
        if variant.name in ABLATED:
            result = result if isinstance(result, tuple) else (result,)
            for part, got in zip(ABLATED[variant.name], result, strict=True):
                assert not rel_err(got, ref[part]) <= TOL, (variant.name, part)  # NaN counts as wrong
            continue
        parts = CHECKED.get(variant.name)
        if parts is None:  # cut visit lists (wrong by design), the visit lists themselves: it ran
            assert "cut to" in variant.name or variant.name == "visit lists (3)", variant.name
            continue
        result = result if isinstance(result, tuple) else (result,)
        assert len(result) == len(parts), variant.name
        for part, got in zip(parts, result):
            if part is not None:
                assert rel_err(got, ref[part]) <= TOL, (variant.name, part)
    assert {"fused dK/dV/dQ", "backward (lse, delta)"} <= set(names)
    assert ({"fused, no dQ write", "dQ, lists cut to 1 tiles", *ABLATED} <= set(names)) == every



def test_interleaved_rounds_time_every_variant(rng, monkeypatch, capsys, interpreted_mosaic):
    """``--rounds 2``: each variant compiled first, then timed in turns; one table row per variant with a
    positive time and a rate (interpret mode on CPU: the schedule, not the speed, is under test)."""
    monkeypatch.setattr(sys, "argv", ["bench_mosaic_kernels.py", "--seqs", "256", "--masks", "causal-packed4",
                                      "--no-fused", "--rounds", "2", "--budget-s", "0.01"])
    bench_mosaic_kernels.main()
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 256 ")]
    assert [cells[2] for cells in table] == ["forward", "dK/dV (split)", "dQ (split)"]
    assert all(float(cells[3]) > 0 and float(cells[4]) >= 0 for cells in table), table  # ms; TFLOP/s (0.0 here)


def test_kv_ablations_change_only_where_the_forward_reads_k_and_v(rng, interpreted_mosaic):
    """``--kv-ablation`` on 512 full-mask tokens (4 key blocks per item, so the copies-once patch skips
    the last 2): every list on key block 0, and K/V copied only for an item's first blocks, give outputs
    that are finite and far from the unpatched kernel's (the patches took effect; the unpatched kernel
    against the reference: the test above)."""
    flops, found, _ = bench_mosaic_kernels.variants(512, "full", key=jax.random.key(int(rng.integers(2 ** 31))),
                                                    no_fused=True, kv_ablation=True)
    by_name = {variant.name: variant for variant in found}
    results = {}
    for name in ("forward kernel alone", "forward kernel alone, every list on key block 0",
                 "forward kernel alone, K/V copied once per item"):
        with bench_mosaic_kernels.patched(by_name[name]):
            results[name] = jax.block_until_ready(bench_mosaic_kernels.jitted_call(by_name[name])())
    unpatched_out = results["forward kernel alone"][0]
    for name, (out, lse) in results.items():
        assert bool(jnp.isfinite(out.astype(jnp.float32)).all()) and bool(jnp.isfinite(lse).all()), name
        if name != "forward kernel alone":
            assert rel_err(out, unpatched_out) > 0.1, name
    assert flops > 0
