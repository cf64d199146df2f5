"""scripts/gpu_next.sh, the queued device calls: every Mosaic tuning they name parses and, built the way
bench_attention.py builds its rows, computes the right forward and backward in interpret mode on CPU; every
step they ask for exists in gpu_kernels.sh; every script they run exists."""

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from longvila_jax.kernels import mosaic_backend
from longvila_jax.kernels.reference import reference_vjp
from longvila_jax.kernels.testing import rel_err

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_attention  # noqa: E402

QUEUE = (SCRIPTS / "gpu_next.sh").read_text()
# gpu_kernels.sh's argument variables and the scripts they go to
ARGUMENTS_OF = {"BENCH_ARGS": "bench_attention.py", "KERNEL_ARGS": "bench_mosaic_kernels.py",
                "PROFILE_ARGS": "profile_attention.py", "POWER_ARGS": "power_attention.py",
                "SAMPLES_ARGS": "anchor_sample_length.py"}
TOL = 1e-2  # bf16 inputs against a float32 reference (relative, whole tensor)


def queued_tunings() -> list[str]:
    specs = []
    for argument in re.findall(r"--mosaic-tuning=(\S+?)[\s\"]", QUEUE):
        specs += [spec for spec in argument.split("|") if spec not in specs]
    return specs


def test_the_queue_names_known_steps_and_scripts():
    steps = re.findall(r'STEPS="([^"]+)"', QUEUE)
    cases = re.split(r"^  [\w-]+\) ", QUEUE.split("\ncase ")[1], flags=re.M)[1:]
    assert len(cases) >= 3 and all('STEPS="' in case for case in cases)  # every call names its steps
    runner = (SCRIPTS / "gpu_kernels.sh").read_text()
    for step in " ".join(steps).split():
        assert f'*" {step} "*' in runner, step
    for script in re.findall(r"scripts/(\w+\.py)", QUEUE):
        assert (SCRIPTS / script).exists(), script
    for variable, script in ARGUMENTS_OF.items():  # every option a call passes is one its script defines
        source = (SCRIPTS / script).read_text()
        for flag in re.findall(r"(--[\w-]+)", " ".join(re.findall(variable + r'="([^"]+)"', QUEUE))):
            assert f'"{flag}"' in source, (script, flag)
    for masks in re.findall(r"--masks? ([\w,-]+)", QUEUE):  # every mask a call names is one the scripts know
        for mask in masks.split(","):
            bench_attention.mask_layout(mask)
    assert {"", "forward_rescale=always", "backward=split",
            "backward=dq_thread;dq_thread=compute:208,thread2:88"} <= set(queued_tunings())


@pytest.fixture
def default_tuning():
    yield
    bench_attention.use_impl("mosaic")  # the plain name resets every Mosaic option


@pytest.mark.parametrize("spec", queued_tunings())
def test_every_queued_tuning_computes_attention_and_its_gradients(spec, rng, interpreted_mosaic, default_tuning):
    """256 tokens in 4 packed causal samples, 2 query heads over 1, D = 128; ``mosaic[spec]`` as the bench's
    row builds it, against a dense float32 attention on fresh inputs."""
    length, n_segments = 256, 4
    keys = jax.random.split(jax.random.key(int(rng.integers(2 ** 31))), 4)
    q, k, v, dout = (jax.random.normal(key, shape, jnp.bfloat16) for key, shape in zip(keys, [
        (1, length, 2, 128), (1, length, 1, 128), (1, length, 1, 128), (1, length, 2, 128)]))
    seg, pos = bench_attention.packed_tokens(length, n_segments)
    impl = bench_attention.use_impl(f"mosaic[{spec}]")
    if "dq_thread" in spec:
        assert mosaic_backend.BACKWARD["mode"] == "dq_thread"
    attend = bench_attention.attention_fn(impl, True, n_segments, 128, 128)
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, seg, pos), q, k, v)
    grads = vjp(dout)

    masks = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos, causal=True)
    ref_out, _, ref_grads = reference_vjp(q, k, v, dout, **masks)
    assert rel_err(out, ref_out) <= TOL
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert rel_err(got, want) <= TOL, (spec, name)
