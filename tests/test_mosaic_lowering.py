"""Every Mosaic GPU kernel option lowers for CUDA on this CPU machine.

``jax.export`` for the ``cuda`` platform runs Pallas' Mosaic GPU lowering in Python: every primitive a
kernel uses needs a lowering rule there, and Mosaic's register layouts are checked as its ops are
emitted. Interpret mode (the numeric tests) skips all of that, so an op without a rule used to show
up only on a device run. Compiling to PTX still needs the GPU. Options are named as
``bench_attention.py --mosaic-tuning`` names them (each spec starts from the defaults)."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import export

from longvila_jax.kernels import mosaic_backend

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import bench_attention  # noqa: E402

SPLIT = ("attention_forward", "attention_dkdv", "attention_dq")
# spec -> the kernels its forward+backward must contain
SPECS = {
    "": SPLIT,
    "backward=dq_thread": ("attention_forward", "attention_dkdv_dq_thread"),
    "backward=dq_thread;dq_thread=dp_issue:with_s": ("attention_forward", "attention_dkdv_dq_thread"),
    "backward=dq_thread;dq_thread=64,216,72,smem,queries": ("attention_forward", "attention_dkdv_dq_thread"),
    "backward=dq_thread;dq_thread=compute:208,thread2:88": ("attention_forward", "attention_dkdv_dq_thread"),
    "backward=fused": ("attention_forward", "attention_dkdv_dq"),
    "forward_loop=serial;forward_q=smem;forward_scale=scores": SPLIT,
    "grid=blocks": SPLIT,
    "grid=persistent;dq_store=registers": SPLIT,
    "dq_grid=persistent;dq_prefetch=next_item;dq=64,2": SPLIT,
    "delta=kernel": ("attention_forward", "attention_dkdv", "attention_dq_delta"),
    "dkdv_loop=pipelined;dkdv=64,3": SPLIT,
    "dkdv_loop=serial;dq_loop=serial": SPLIT,
    "dkdv_loop=overlap_dv": SPLIT,
}


@pytest.fixture
def default_tuning():
    yield
    bench_attention.use_impl("mosaic")  # the plain name resets every Mosaic option


@pytest.mark.parametrize("spec", list(SPECS))
def test_the_kernels_of_a_mosaic_option_lower_for_cuda(spec, default_tuning):
    """Forward and gradients of 4 packed causal samples (GQA 2/1, D = 128, 1,000 tokens: a ragged tail)."""
    bench_attention.set_mosaic_tuning(spec)
    length, quarter = 1000, 250
    seg = jnp.repeat(jnp.arange(1, 5, dtype=jnp.int32), quarter)[None]
    pos = jnp.tile(jnp.arange(quarter, dtype=jnp.int32), 4)[None]

    def loss(q, k, v):
        out, lse = mosaic_backend.attention(q, k, v, seg, seg, pos, pos, causal=True, scale=128 ** -0.5)
        return out.astype(jnp.float32).sum() + jnp.where(jnp.isfinite(lse), lse, 0.0).sum()

    q = jax.ShapeDtypeStruct((1, length, 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, length, 1, 128), jnp.bfloat16)
    module = export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=("cuda",))(q, kv, kv).mlir_module()
    missing = [name for name in SPECS[spec] if f"{name}_mosaic_gpu" not in module]
    assert not missing, (spec, missing)
