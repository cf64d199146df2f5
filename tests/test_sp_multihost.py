"""Multi-host path: two processes on localhost (jax.distributed, 4 CPU devices each).

The test starts two copies of this file as workers.  Each builds the same
global inputs from a shared seed, runs sp.attention (forward and the VJP) on
a (ring 2, ulysses 4) mesh that spans both processes (Ulysses inside a
process, the ring across them), gathers the results, and process 0 saves
them.  They must agree with the same computation in this single process and
with the dense reference.
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from two_processes import run_workers  # noqa: E402

SEQ, Q_HEADS, KV_HEADS, HEAD_DIM, BATCH = 128, 8, 2, 16, 2


def make_inputs(seed):
    """Natural-order packed row with padding, put in zigzag order for ring 2; q, k, v, dout."""
    from longvila_jax.sp import balanced_order

    rng = np.random.default_rng(seed)
    seg = np.zeros((BATCH, SEQ), np.int32)
    pos = np.zeros((BATCH, SEQ), np.int32)
    for b in range(BATCH):
        bounds = [0, *sorted(rng.choice(np.arange(8, 110), 2, replace=False)), 116]
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
            seg[b, lo:hi], pos[b, lo:hi] = i, np.arange(hi - lo)
        order = balanced_order(seg[b], 2)[0]
        seg[b], pos[b] = seg[b, order], pos[b, order]
    q = rng.standard_normal((BATCH, SEQ, Q_HEADS, HEAD_DIM)).astype(np.float32)
    k = rng.standard_normal((BATCH, SEQ, KV_HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.standard_normal((BATCH, SEQ, KV_HEADS, HEAD_DIM)).astype(np.float32)
    dout = rng.standard_normal((BATCH, SEQ, Q_HEADS, HEAD_DIM)).astype(np.float32)
    return q, k, v, dout, seg, pos


def run_sp(inputs, to_global, gather):
    """out, dq, dk, dv of sp.attention on a (ring 2, ulysses 4) mesh of all global devices."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from longvila_jax import sp
    from longvila_jax.sharding import make_mesh

    mesh = make_mesh(ring=2, ulysses=4)
    seq = ("ring", "ulysses")
    q, k, v, dout, seg, pos = (
        to_global(x, NamedSharding(mesh, P(None, seq, None, None) if x.ndim == 4 else P(None, seq)))
        for x in inputs)

    @jax.jit
    def value_and_grads(q, k, v, dout, seg, pos):
        out, vjp = jax.vjp(lambda q, k, v: sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh),
                           q, k, v)
        return (out, *vjp(dout))

    return [gather(x) for x in value_and_grads(q, k, v, dout, seg, pos)]


def worker(process_id, port, seed, out_path):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from jax.experimental import multihost_utils

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                               local_device_ids=list(range(4)))
    assert jax.device_count() == 8 and jax.local_device_count() == 4

    def to_global(x, sharding):
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    results = run_sp(make_inputs(seed), to_global, gather)
    if process_id == 0:
        np.savez(out_path, *results)
    jax.distributed.shutdown()


def test_two_processes_agree_with_one(rng, tmp_path):
    import jax
    import jax.numpy as jnp

    from longvila_jax.kernels import reference_attention

    seed = int(rng.integers(2**31))
    out_path = tmp_path / "multihost.npz"
    run_workers(__file__, seed, out_path, timeout=240)
    with np.load(out_path) as data:
        multi = [data[f"arr_{i}"] for i in range(4)]

    inputs = make_inputs(seed)
    single = run_sp(inputs, lambda x, sharding: jax.device_put(x, sharding), np.asarray)
    q, k, v, dout, seg, pos = (jnp.asarray(x) for x in inputs)

    def ref(q, k, v):
        return reference_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos,
                                   kv_positions=pos, causal=True)[0]

    out, vjp = jax.vjp(ref, q, k, v)
    want = [out, *vjp(dout)]
    for name, m, s, w in zip(("out", "dq", "dk", "dv"), multi, single, want):
        w = np.asarray(w)
        assert np.max(np.abs(m - s)) <= 1e-6 * np.max(np.abs(s)), f"{name}: two processes != one process"
        assert np.max(np.abs(m - w)) <= 1e-5 * np.max(np.abs(w)), f"{name}: two processes != dense reference"


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
