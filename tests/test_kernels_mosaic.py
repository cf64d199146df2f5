"""The Mosaic GPU kernels on CPU: Pallas' GPU interpret mode runs the same kernels (TMA copies,
barriers, wgmma, the three warpgroups) against the dense float32 reference; the visit lists are
checked against the elementwise mask. (On a GPU, tests/test_kernels_gpu.py runs them natively.)
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from longvila_jax.kernels import attention_delta, mosaic_backend, mosaic_plan, mosaic_schedule, reference_attention
from longvila_jax.kernels.mask import visible
from longvila_jax.kernels.testing import query_key_layouts, random_qkv, rel_err, rising_scores_qkv

TOL = 1e-2
INTERPRET = plgpu.InterpretGPUParams()


def test_visit_lists_match_the_mask(rng):
    block = 8
    q_seg, q_pos, kv_seg, kv_pos = (jnp.asarray(x) for x in
                                    query_key_layouts(rng, 2, 37, 50, max_segments=4, shuffle=False))
    for causal in (True, False):
        tiles = mosaic_plan.tile_table(q_seg, q_pos, kv_seg, kv_pos, causal=causal, block_q=block, block_k=block)
        lists = np.asarray(mosaic_plan.visit_lists(tiles.visit, tiles.whole))
        assert lists.shape[2] == 1 and lists.shape[-1] % 4 == 0  # one row, 16-byte multiple
        lists = lists.reshape(2, lists.shape[1], -1)
        seen = np.asarray(visible(q_seg, q_pos, kv_seg, kv_pos, causal=causal))
        seen = np.pad(seen, ((0, 0), (0, 40 - 37), (0, 56 - 50)))  # padded tails see nothing
        n_q, n_k = 40 // block, 56 // block
        tile = seen.reshape(2, n_q, block, n_k, block).transpose(0, 1, 3, 2, 4)
        for b in range(2):
            counts = lists[b, :, 0]
            assert (np.diff(counts) <= 0).all()  # longest first
            np.testing.assert_array_equal(np.sort(lists[b, :, 1]), np.arange(n_q))  # each block once
            for row in lists[b]:
                count, i = row[0], row[1]
                entries = row[mosaic_plan.HEADER:mosaic_plan.HEADER + count]
                assert (row[mosaic_plan.HEADER + count:] == 0).all()  # nothing past the count
                blocks, kinds = entries >> mosaic_plan.KIND_BITS, entries & 3
                assert (np.diff(blocks) > 0).all()
                assert set(kinds.tolist()) <= {mosaic_plan.WHOLE, mosaic_plan.FULL}  # one_segment not given
                nonempty = {j for j in range(n_k) if tile[b, i, j].any()}
                assert nonempty <= set(blocks.tolist())  # nothing visible is skipped
                for j, kind in zip(blocks, kinds):
                    if kind == mosaic_plan.WHOLE:
                        assert tile[b, i, j].all()  # an unmasked tile is wholly visible


def test_visit_list_rows_are_whole_128_byte_units(rng):
    """The persistent kernels keep two lists side by side in SMEM, each a TMA destination, which
    must start 128-byte aligned: a list's rows hold a multiple of 32 int32 entries."""
    for n_streamed in (1, 8, 30, 31, 64, 254, 300):
        visit = jnp.asarray(rng.random((1, 2, n_streamed)) < 0.5)
        lists = mosaic_plan.visit_lists(visit, visit & False)
        assert lists.shape[-1] * 4 % 128 == 0 and lists.shape[-1] <= 256, (n_streamed, lists.shape)
        assert lists.shape[-1] * lists.shape[-2] >= mosaic_plan.HEADER + n_streamed


def test_long_visit_lists_fold_into_rows_of_256(rng):
    visit = jnp.asarray(rng.random((1, 3, 300)) < 0.5)
    lists = np.asarray(mosaic_plan.visit_lists(visit, visit & False))
    assert lists.shape == (1, 3, 2, 256)  # a TMA box axis holds at most 256 entries
    start = mosaic_plan.HEADER
    for row in lists.reshape(3, -1):
        count, i = row[0], row[1]
        np.testing.assert_array_equal(row[start:start + count] >> mosaic_plan.KIND_BITS,
                                      np.flatnonzero(np.asarray(visit[0, i])))
        assert (row[start:start + count] & 3 == mosaic_plan.FULL).all()


@pytest.mark.parametrize("causal", [True, False])
def test_mask_kinds_match_the_tiles(rng, causal):
    """Every kind a list gives a tile is one its tokens justify: WHOLE only where all pairs are visible;
    POSITIONS (causal only) only where both blocks hold one and the same nonzero segment, so the position
    test alone gives the mask; and with aligned packed samples each sample's diagonal is POSITIONS."""
    block, length = 8, 64
    seg = np.repeat(np.arange(1, 5), length // 4)[None]  # 4 samples of 16: block-aligned
    pos = np.concatenate([rng.permutation(16) for _ in range(4)])[None]  # shuffled within each sample
    q_seg, q_pos = jnp.asarray(seg), jnp.asarray(pos)
    layouts = [(q_seg, q_pos, q_seg, q_pos)]
    layouts.append(tuple(jnp.asarray(x) for x in query_key_layouts(rng, 1, 40, 56, max_segments=3, shuffle=True)))
    for q_seg, q_pos, kv_seg, kv_pos in layouts:
        tiles = mosaic_plan.tile_table(q_seg, q_pos, kv_seg, kv_pos, causal=causal, block_q=block, block_k=block)
        lists = np.asarray(mosaic_plan.visit_lists(tiles.visit, tiles.whole, tiles.one_segment))
        n_q, n_k = -(-q_seg.shape[1] // block), -(-kv_seg.shape[1] // block)
        pad = ((0, 0), (0, n_q * block - q_seg.shape[1]))
        q_seg_p, q_pos_p = np.pad(np.asarray(q_seg), pad), np.pad(np.asarray(q_pos), pad)
        pad = ((0, 0), (0, n_k * block - kv_seg.shape[1]))
        kv_seg_p, kv_pos_p = np.pad(np.asarray(kv_seg), pad), np.pad(np.asarray(kv_pos), pad)
        seen = np.asarray(visible(jnp.asarray(q_seg_p), jnp.asarray(q_pos_p), jnp.asarray(kv_seg_p),
                                  jnp.asarray(kv_pos_p), causal=causal))[0]
        kinds_seen = set()
        for row in lists.reshape(lists.shape[1], -1):
            count, i = row[0], row[1]
            for entry in row[mosaic_plan.HEADER:mosaic_plan.HEADER + count]:
                j, kind = entry >> mosaic_plan.KIND_BITS, entry & 3
                kinds_seen.add(int(kind))
                rows, cols = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
                pair = seen[rows, cols]
                if kind == mosaic_plan.WHOLE:
                    assert pair.all()
                elif kind == mosaic_plan.POSITIONS:
                    assert causal
                    ids = np.concatenate([q_seg_p[0, rows], kv_seg_p[0, cols]])
                    assert (ids == ids[0]).all() and ids[0] != 0
                    np.testing.assert_array_equal(pair, kv_pos_p[0, cols][None, :] <= q_pos_p[0, rows][:, None])
                else:
                    assert kind == mosaic_plan.FULL
        if q_seg is layouts[0][0]:  # aligned samples: no tile needs the segment test
            assert mosaic_plan.FULL not in kinds_seen
            assert (mosaic_plan.POSITIONS in kinds_seen) == causal


def test_bad_tuning_names_the_kernel_and_the_valid_values():
    with pytest.raises(ValueError, match="kernel must be one of"):
        mosaic_backend.set_tuning("backward", 64, 2)
    with pytest.raises(ValueError, match="'dq': block must be 64 or 128.*block=96"):
        mosaic_backend.set_tuning("dq", 96, 2)


def run_case(rng, q_len, kv_len, q_heads, kv_heads, head_dim, *, layout, causal, batch=1):
    q, k, v = (jnp.asarray(x, jnp.bfloat16)
               for x in random_qkv(rng, batch, q_len, kv_len, q_heads, kv_heads, head_dim))
    q_seg, q_pos, kv_seg, kv_pos = (jnp.asarray(x) for x in query_key_layouts(
        rng, batch, q_len, kv_len, max_segments=3, shuffle=layout == "shuffled"))
    if layout == "plain":
        q_seg, kv_seg = jnp.ones_like(q_seg), jnp.ones_like(kv_seg)
        q_pos, kv_pos = (jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n)) for n in (q_len, kv_len))
    else:
        q_seg = q_seg.at[:, :5].set(0)  # fully masked rows
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos, causal=causal)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)
    dlse = jnp.asarray(rng.standard_normal((batch, q_heads, q_len)), jnp.float32)

    def mosaic(*qkv):
        return mosaic_backend.attention(*qkv, q_seg, kv_seg, q_pos, kv_pos, causal=causal,
                                        scale=head_dim ** -0.5, interpret=INTERPRET)

    def reference(*qkv):
        return reference_attention(*qkv, **mask)

    def forward_and_grads(attention, *qkv):
        """(out, lse) and the gradients of sum(out * dout) + sum(lse * dlse) over finite lse: the forward
        runs once (interpret mode's cost is the kernels' run)."""
        (out, lse), vjp = jax.vjp(attention, *qkv)
        return out, lse, vjp((dout.astype(out.dtype), jnp.where(jnp.isfinite(lse), dlse, 0.0)))

    out, lse, grads = forward_and_grads(mosaic, q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_lse, ref_grads = forward_and_grads(reference, *f32)
    finite = np.isfinite(np.asarray(ref_lse))
    np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), finite)
    assert (np.asarray(out, np.float32).transpose(0, 2, 1, 3)[~finite] == 0).all()  # empty rows: out 0
    assert rel_err(out, ref_out) <= TOL
    np.testing.assert_allclose(np.asarray(lse)[finite], np.asarray(ref_lse)[finite], rtol=1e-4, atol=1e-4)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert np.isfinite(np.asarray(g, np.float32)).all(), name
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))
    return q, k, v, mask, ref_out, ref_lse


def run_switch_case(rng, head_dim=64):
    """The case a non-default switch runs: GQA 2/1 (the default paths run 4/2), 200 queries over 300 keys
    (ragged), packed segments, empty rows, causal, dlse."""
    return run_case(rng, 200, 300, 2, 1, head_dim, layout="packed", causal=True)


def test_packed_gqa_ragged_lengths_match_reference(rng):
    """GQA 4/2, Sq != Sk, neither a multiple of the 128 block, packed segments, empty rows, dlse."""
    run_case(rng, 200, 300, 4, 2, 64, layout="packed", causal=True)


def test_shuffled_full_mask_and_given_lse(rng):
    """A zigzag-like shuffled layout without the causal part; then the backward from a given
    (reference) out and lse, as a ring step calls it."""
    q, k, v, mask, ref_out, ref_lse = run_case(rng, 256, 128, 2, 1, 64, layout="shuffled", causal=False)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)
    grads = mosaic_backend.attention_bwd(
        q, k, v, ref_out.astype(jnp.bfloat16), ref_lse, dout, None, mask["q_segment_ids"], mask["kv_segment_ids"],
        mask["q_positions"], mask["kv_positions"], causal=False, scale=64 ** -0.5, interpret=INTERPRET)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    _, vjp = jax.vjp(lambda *a: reference_attention(*a, **mask), *f32)
    ref_grads = vjp((dout.astype(jnp.float32), jnp.zeros_like(ref_lse)))
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))
    # a given delta (as a ring passes it) with a dlse folded in replaces the kernel's own row sum
    dlse = jnp.asarray(rng.standard_normal(ref_lse.shape), jnp.float32)
    out16 = ref_out.astype(jnp.bfloat16)
    grads = mosaic_backend.attention_bwd(
        q, k, v, out16, ref_lse, dout, None, mask["q_segment_ids"], mask["kv_segment_ids"], mask["q_positions"],
        mask["kv_positions"], causal=False, scale=64 ** -0.5, delta=attention_delta(out16, dout, ref_lse, dlse=dlse),
        interpret=INTERPRET)
    ref_grads = vjp((dout.astype(jnp.float32), dlse))
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))


def mosaic_kernels(seq: int, seg=None) -> int:
    """Mosaic GPU kernels in the CUDA lowering of one causal fwd+bwd of ``seq`` tokens (4 query heads over
    2, D = 128); ``seg``: segment ids closed over (an array: known while tracing), passed as an argument
    (a ShapeDtypeStruct: traced) or None (all ones, closed over)."""
    shapes = [jax.ShapeDtypeStruct((1, seq, heads, 128), jnp.bfloat16) for heads in (4, 2, 2, 4)]
    pos = jnp.arange(seq, dtype=jnp.int32)[None]
    seg = jnp.ones((1, seq), jnp.int32) if seg is None else seg
    traced = isinstance(seg, jax.ShapeDtypeStruct)

    def fwd_bwd(q, k, v, dout, *traced_seg):
        ids = traced_seg[0] if traced else seg
        _, vjp = jax.vjp(lambda *qkv: mosaic_backend.attention(*qkv, ids, ids, pos, pos, causal=True,
                                                               scale=0.1)[0], q, k, v)
        return vjp(dout)

    module = jax.export.export(jax.jit(fwd_bwd), platforms=["cuda"])(*shapes, *([seg] if traced else []))
    return module.mlir_module().count("stablehlo.custom_call @mosaic_gpu")


@pytest.fixture(params=[mode for mode in mosaic_backend.BACKWARD_MODES if mode != "auto"])
def backward_mode(request):
    """Each way the backward gets dQ (D = 128 fuses it into the dK/dV kernel unless split); "auto" picks
    one of them (test_auto_backward_picks_by_length_and_determinism)."""
    mosaic_backend.set_backward(request.param)
    yield request.param
    mosaic_backend.set_backward(mosaic_backend.BACKWARD_MODES[0])


def test_auto_backward_picks_by_length_and_determinism(monkeypatch):
    """The default "auto" backward: the dQ-thread kernel from DQ_THREAD_FROM keys on (D 64 or 128, its
    dK/dV tuning), split below it, and split everywhere when XLA_FLAGS asks for deterministic ops; the
    lowered backward then holds two Mosaic kernels (forward, dK/dV/dQ) or three (forward, dK/dV, dQ)."""
    assert mosaic_backend.BACKWARD["mode"] == "auto"
    start = mosaic_backend.DQ_THREAD_FROM
    assert mosaic_backend.backward_mode(128, start) == "dq_thread"
    assert mosaic_backend.backward_mode(64, 4 * start) == "dq_thread"
    assert mosaic_backend.backward_mode(128, start - 1) == "split"

    assert mosaic_kernels(start) == 2 and mosaic_kernels(300) == 3
    saved = dict(mosaic_backend.TUNING)
    mosaic_backend.set_tuning("dkdv", 128, 2)  # 128-query dK/dV blocks: the dQ-thread kernel cannot run
    try:
        assert mosaic_backend.backward_mode(128, start) == "split"
    finally:
        mosaic_backend.TUNING.update(saved)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_gpu_deterministic_ops=true")
    assert mosaic_backend.backward_mode(128, start) == "split"


def test_auto_backward_on_an_h100_keeps_split_for_calls_that_may_pack_samples(monkeypatch):
    """On an H100 "auto" takes dq_thread from 32k keys on when the ids may pack samples (traced, or concrete
    with several segments in a row), from DQ_THREAD_FROM on one known sample; other devices keep
    DQ_THREAD_FROM for both. The lowered fwd+bwd shows it: three Mosaic kernels (split) or two."""
    h100, h200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    start = mosaic_backend.DQ_THREAD_FROM
    assert mosaic_backend.backward_mode(128, start, packed=True, device_kind=h100) == "split"
    assert mosaic_backend.backward_mode(128, 2 * start, packed=True, device_kind=h100) == "split"
    assert mosaic_backend.backward_mode(128, 32768, packed=True, device_kind=h100) == "dq_thread"
    assert mosaic_backend.backward_mode(128, start, packed=False, device_kind=h100) == "dq_thread"
    assert mosaic_backend.backward_mode(128, start, packed=True, device_kind=h200) == "dq_thread"

    seq = start
    pos = jnp.arange(seq, dtype=jnp.int32)[None]
    one = jnp.ones((1, seq), jnp.int32)
    padded = one.at[:, -100:].set(0)
    two = jnp.repeat(jnp.array([1, 2], jnp.int32), seq // 2)[None]
    rows = jnp.concatenate([one, 3 * one])  # one sample per row, another id in each
    assert not mosaic_backend._Plan(one, one, pos, pos, True).packed
    assert not mosaic_backend._Plan(padded, padded, pos, pos, True).packed
    assert not mosaic_backend._Plan(rows, rows, jnp.tile(pos, (2, 1)), jnp.tile(pos, (2, 1)), True).packed
    assert mosaic_backend._Plan(two, two, pos, pos, True).packed
    traced = []
    jax.jit(lambda seg: traced.append(mosaic_backend._Plan(seg, seg, pos, pos, True).packed) or seg)(one)
    assert traced == [True]

    monkeypatch.setattr(mosaic_backend, "_device_kind", lambda: h100)
    assert mosaic_kernels(seq, one) == 2
    assert mosaic_kernels(seq, two) == 3
    assert mosaic_kernels(seq, jax.ShapeDtypeStruct((1, seq), jnp.int32)) == 3


def test_plain_causal_head_dim_128(rng, backward_mode):
    run_case(rng, 256, 256, 2, 2, 128, layout="plain", causal=True)


@pytest.mark.parametrize("backward_mode", ["dq_thread"], indirect=True)
def test_fused_dq_packed_gqa_head_dim_128(rng, backward_mode):
    """dQ accumulated inside the dK/dV kernel: GQA 4/2 (each CTA adds to two heads' dQ), ragged
    lengths, packed segments, empty rows, dlse."""
    assert mosaic_backend.BACKWARD["mode"] == backward_mode
    run_case(rng, 200, 300, 4, 2, 128, layout="packed", causal=True)


@pytest.mark.parametrize("backward_mode", ["dq_thread"], indirect=True)
def test_dq_thread_head_dim_64_packed_gqa(rng, backward_mode):
    """The dQ-thread kernel at D = 64 (one dQ chunk per step, so its two staging buffers alternate
    across steps): GQA 2/1, ragged lengths, packed segments, empty rows."""
    run_switch_case(rng)


@pytest.fixture
def dq_thread_options(request):
    """The dq_thread kernel's options (``set_dq_thread``), back to the defaults afterwards."""
    mosaic_backend.set_dq_thread(request.param)
    yield request.param
    mosaic_backend.set_dq_thread("")


@pytest.mark.parametrize("backward_mode", ["dq_thread"], indirect=True)
@pytest.mark.parametrize("dq_thread_options", ["probe:no_dq"], indirect=True)
def test_dq_thread_probe_without_dq_work_keeps_dk_and_dv(rng, backward_mode, dq_thread_options):
    """The bench's "no_dq" probe: thread 2 does no dQ work, so dQ stays zero, while dK and dV are
    still right (the probe times the rest of the kernel)."""
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(rng, 1, 256, 256, 4, 2, 128))
    seg = jnp.ones((1, 256), jnp.int32)
    pos = jnp.arange(256, dtype=jnp.int32)[None]
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    (ref_out, ref_lse), vjp = jax.vjp(lambda *a: reference_attention(*a, causal=True), *f32)
    _, ref_dk, ref_dv = vjp((dout.astype(jnp.float32), jnp.zeros_like(ref_lse)))
    dq, dk, dv = mosaic_backend.attention_bwd(q, k, v, ref_out.astype(jnp.bfloat16), ref_lse, dout, None, seg, seg,
                                              pos, pos, causal=True, scale=128 ** -0.5, interpret=INTERPRET)
    assert not np.asarray(dq, np.float32).any()
    assert rel_err(dk, ref_dk) <= TOL and rel_err(dv, ref_dv) <= TOL, (rel_err(dk, ref_dk), rel_err(dv, ref_dv))


def test_dq_thread_refuses_tunings_it_cannot_hold():
    from longvila_jax.kernels import mosaic_fused

    q = jnp.zeros((1, 128, 2, 128), jnp.bfloat16)
    lists = jnp.zeros((1, 1, 1, 32), jnp.int32)
    with pytest.raises(ValueError, match="needs 64-query blocks, D of 64 or 128 and 2 slots, got block=64"):
        mosaic_fused.dkdv_dq(q, q, q, q, None, None, None, lists, q, causal=True, scale=0.1,
                             tuning=mosaic_backend.mc.Tuning(64, 3))
    with pytest.raises(ValueError, match=r"2 x compute \+ thread 2 <= 504, got \(232, 56\)"):
        mosaic_fused.dkdv_dq(q, q, q, q, None, None, None, lists, q, causal=True, scale=0.1,
                             tuning=mosaic_backend.mc.Tuning(64, 2), registers=(232, 56))
    with pytest.raises(ValueError, match="probe must be one of .'none', 'no_add', 'no_dq'., got 'no_k'"):
        mosaic_fused.dkdv_dq(q, q, q, q, None, None, None, lists, q, causal=True, scale=0.1,
                             tuning=mosaic_backend.mc.Tuning(64, 2), probe="no_k")
    # positional specs and the removed forms' names are refused, naming the valid ones
    for spec in ("216,72", "chunk:64", "dp_issue:with_s", "compute:two"):
        with pytest.raises(ValueError, match=f"NAME:VALUE pairs .*names: compute, thread2, probe.*got '{spec}'"):
            mosaic_backend.set_dq_thread(spec)
    assert mosaic_backend.DQ_THREAD == mosaic_backend.DQ_THREAD_DEFAULT
    mosaic_backend.set_dq_thread("thread2:88,compute:208,probe:no_add")
    try:
        assert mosaic_backend.DQ_THREAD == dict(registers=(208, 88), probe="no_add")
    finally:
        mosaic_backend.set_dq_thread("")
    assert mosaic_backend.DQ_THREAD == mosaic_backend.DQ_THREAD_DEFAULT


def test_forward_rescale_always_packed_gqa(rng, monkeypatch):
    """The forward's max following every tile with the accumulator rescaled each step (the default keeps
    lazy maxima): GQA 2/1, ragged lengths, packed, empty rows."""
    monkeypatch.setitem(mosaic_backend.FORWARD_RESCALE, "mode", "always")
    run_switch_case(rng)


@pytest.mark.parametrize("rescale", ["lazy", "always"])
def test_forward_follows_scores_that_grow_along_the_keys(rng, rescale, monkeypatch):
    """Scores that rise along the keys, steeply for some rows (each 128-key block passes the kept max by
    more than mosaic_rescale.GROWTH, so it moves) and gently for others (it stays, and the exponentials
    reach up to 2^GROWTH): out, lse and dv against the float32 reference, causal, D 64."""
    from longvila_jax.kernels import mosaic_rescale

    monkeypatch.setitem(mosaic_backend.FORWARD_RESCALE, "mode", rescale)
    q_len = kv_len = 384
    head_dim, scale = 64, 64 ** -0.5
    q, k, v = rising_scores_qkv(rng, q_len, kv_len, 2, 1, head_dim, max_rise=3 * mosaic_rescale.GROWTH)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    ones = jnp.ones((1, q_len), jnp.int32)
    positions = jnp.arange(q_len, dtype=jnp.int32)[None]
    mask = (ones, ones, positions, positions)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)

    def run(attention, *qkv):
        (out, lse), vjp = jax.vjp(attention, *qkv)
        return out, lse, vjp((dout.astype(out.dtype), jnp.zeros_like(lse)))

    out, lse, grads = run(lambda *qkv: mosaic_backend.attention(*qkv, *mask, causal=True, scale=scale,
                                                                interpret=INTERPRET), q, k, v)
    ref_out, ref_lse, ref_grads = run(
        lambda *qkv: reference_attention(*qkv, q_segment_ids=ones, kv_segment_ids=ones, q_positions=positions,
                                         kv_positions=positions, causal=True, scale=scale),
        *(x.astype(jnp.float32) for x in (q, k, v)))
    # the rows of the last query block (they see all 3 key blocks): block maxima rising past GROWTH and below
    scores = np.einsum("qhd,khd->hqk", *(np.asarray(x, np.float32)[0, :, :1] for x in (q[:, -128:], k)))
    block_max = (scores * scale / np.log(2.0)).reshape(1, 128, 3, 128).max(axis=-1)
    rises = np.diff(block_max[:, :, :2], axis=-1)  # blocks 0 -> 1 (block 2 is the causal diagonal)
    assert (rises > mosaic_rescale.GROWTH).any() and ((rises > 1) & (rises < mosaic_rescale.GROWTH)).any()
    assert rel_err(out, ref_out) <= TOL
    np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), rtol=1e-4, atol=1e-3)
    # dv through the backward kernels, which read this lse; dq and dk are left out: on rows this peaked
    # ds = p * (dp - delta) is a difference of nearly equal terms, 1-4% off in bf16 with either rescale
    assert rel_err(grads[2], ref_grads[2]) <= TOL


@pytest.mark.parametrize("order", ["batch", "rank"])
@pytest.mark.parametrize("shape,workers", [((2, 4, 1), 3), ((2, 4, 1), 5), ((3, 2, 2), 4), ((1, 7, 1), 1),
                                           ((1, 5, 1), 9), ((2, 66, 2), 132), ((2, 25, 2), 132)])
def test_persistent_work_covers_every_item_once(shape, workers, order):
    """Worker w's items in snake order: every (b, r, h) exactly once, counts as promised, and in
    each wave the workers hold consecutive items of the order (the heads of a GQA group side by
    side): row after row ("batch"), or every row's r-th list before any row's (r+1)-th ("rank")."""
    work = mosaic_schedule.Work(shape, workers, order=order)
    batch, n_lists, heads = shape
    seen = []
    for w in range(work.workers):
        count = int(work.count(jnp.int32(w)))
        items = [tuple(int(x) for x in work.item(jnp.int32(w), jnp.int32(i))) for i in range(count)]
        if order == "batch":
            seen += [(b * n_lists + r) * heads + h for b, r, h in items]
        else:
            seen += [(r * batch + b) * heads + h for b, r, h in items]
        for i, flat in enumerate(seen[-count:]):
            assert i * work.workers <= flat < (i + 1) * work.workers  # item i lies in wave i
    assert sorted(seen) == list(range(work.n_items))


def test_auto_item_order_runs_short_rows_by_rank():
    """"auto": rank order for a persistent grid over several rows whose items fill under ``ROW_WAVES``
    waves each (4 rows of 16 query blocks, 32 heads: 3.9 waves of 132), else batch order: long rows
    (64 blocks: 15.5 waves), one row, one CTA per item."""
    assert mosaic_schedule.Work((4, 16, 32), 132).order == "rank"
    assert mosaic_schedule.Work((4, 64, 32), 132).order == "batch"
    assert mosaic_schedule.Work((1, 16, 32), 132).order == "batch"
    assert mosaic_schedule.Work((4, 16, 32), 4 * 16 * 32).order == "batch"
    assert mosaic_schedule.plan_work((4, 16, 32), 132, (4, 16, 1, 32))[0].order == "rank"
    assert mosaic_schedule.plan_work((4, 16, 32), 132, (4, 16, 1, 32), order="batch")[0].order == "batch"
    with pytest.raises(ValueError, match="item order must be one of .'auto', 'rank', 'batch'., got 'rows'"):
        mosaic_schedule.Work((4, 16, 32), 132, order="rows")
    with pytest.raises(ValueError, match="item order: mode must be one of"):
        mosaic_backend.set_item_order("rows")


@pytest.mark.parametrize("order", ["rank", "batch"])
def test_persistent_grids_over_batch_rows(rng, order, monkeypatch):
    """Two batch rows of their own packed layouts on 3 persistent forward CTAs (8 items, the last wave
    partial), items taken by rank (one row's list beside the other's) or row after row: each row's out,
    lse and grads against the float32 reference."""
    monkeypatch.setitem(mosaic_backend.GRID, "forward", "persistent")
    monkeypatch.setitem(mosaic_backend.PERSISTENT_WORKERS, "count", 3)
    monkeypatch.setitem(mosaic_backend.ITEM_ORDER, "mode", order)
    run_case(rng, 200, 200, 2, 1, 64, layout="packed", causal=True, batch=2)


def test_persistent_grid_only_where_two_lists_fit_smem():
    """Two list slots per persistent CTA while they fit ``LIST_SMEM_BYTES``; longer lists (here 13
    rows of 256 entries, 26 KiB for two) and ``workers=None`` run one CTA per item with one slot."""
    shape = (1, 64, 32)
    work, slots = mosaic_schedule.plan_work(shape, 132, (1, 64, 1, 96))
    assert (work.workers, slots) == (132, 2)
    work, slots = mosaic_schedule.plan_work(shape, 132, (1, 64, 13, 256))
    assert (work.workers, slots) == (64 * 32, 1)
    work, slots = mosaic_schedule.plan_work(shape, None, (1, 64, 1, 96))
    assert (work.workers, slots) == (64 * 32, 1)
    work, slots = mosaic_schedule.plan_work((1, 2, 3), 132, (1, 2, 1, 32))  # fewer items than workers
    assert (work.workers, slots) == (6, 1)
    # lookahead (the forward with q from registers): three slots, while three fit
    work, slots = mosaic_schedule.plan_work(shape, 132, (1, 64, 1, 96), lookahead=True)
    assert (work.workers, slots, work.lookahead) == (132, 3, True)
    work, slots = mosaic_schedule.plan_work(shape, 132, (1, 64, 9, 256), lookahead=True)  # 27 KiB for three
    assert (work.workers, slots, work.lookahead) == (64 * 32, 1, False)
    assert not mosaic_schedule.plan_work(shape, 132, (1, 64, 9, 256))[0].lookahead  # 18 KiB: two fit


def test_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        mosaic_schedule.Work((1, 4, 2), 0)


@pytest.mark.parametrize("grid,workers", [("persistent", 3), ("blocks", None)])
def test_forward_grids_packed_gqa(rng, grid, workers, monkeypatch):
    """The forward on 3 persistent CTAs (some run two items or more of GQA 2/1: lists, queries and slots
    carried across items, the last wave partial) and on one CTA per block; ragged lengths, packed
    segments, empty rows, dlse."""
    mosaic_backend.set_grid(grid)
    monkeypatch.setitem(mosaic_backend.PERSISTENT_WORKERS, "count", workers)
    try:
        run_switch_case(rng)
    finally:
        mosaic_backend.GRID.update(mosaic_backend.DEFAULT_GRID)


def test_bad_grid_mode_names_the_choices():
    with pytest.raises(ValueError, match="grid: mode must be one of .'persistent', 'blocks'., got 'waves'"):
        mosaic_backend.set_grid("waves")
    with pytest.raises(ValueError, match="kernel must be 'forward' .the dQ kernel runs one CTA per block., got 'dkdv'"):
        mosaic_backend.set_grid("blocks", "dkdv")
    with pytest.raises(ValueError, match="kernel must be 'forward' .*, got 'dkdv'"):
        mosaic_backend.workers("dkdv")
    assert mosaic_backend.GRID == mosaic_backend.DEFAULT_GRID


@pytest.mark.parametrize("setter, bad, message", [
    ("set_backward", "atomic", "mode must be one of .'auto', 'split', 'dq_thread'., got 'atomic'"),
    ("set_forward_rescale", "never", "forward rescale: mode must be one of .'lazy', 'always'., got 'never'"),
    ("set_mask_tiles", "none", "mask tiles: mode must be one of .'positions', 'full'., got 'none'"),
])
def test_bad_mode_names_the_choices(setter, bad, message):
    with pytest.raises(ValueError, match=message):
        getattr(mosaic_backend, setter)(bad)


def _fwd_bwd_for_cuda(batch: int) -> str:
    """The MLIR text of a causal fwd+bwd through the mosaic backend exported for CUDA (the whole Mosaic GPU
    lowering, on CPU): ``batch`` rows of 300 tokens (ragged), D = 128, GQA 4/2, traced ids and positions."""
    def fwd_bwd(q, k, v, dout, seg, pos):
        _, vjp = jax.vjp(lambda *qkv: mosaic_backend.attention(*qkv, seg, seg, pos, pos, causal=True,
                                                               scale=0.1)[0], q, k, v)
        return vjp(dout)

    shapes = [jax.ShapeDtypeStruct((batch, 300, heads, 128), jnp.bfloat16) for heads in (4, 2, 2, 4)]
    shapes += [jax.ShapeDtypeStruct((batch, 300), jnp.int32)] * 2
    return jax.export.export(jax.jit(fwd_bwd), platforms=["cuda"])(*shapes).mlir_module()


@pytest.mark.parametrize("backward_mode", ["split", "dq_thread"], indirect=True)
def test_kernels_lower_for_cuda_without_a_gpu(backward_mode):
    """The whole Mosaic GPU lowering (layout inference included) for an H100/H200, run on CPU by
    ``jax.export``: forward + backward at D = 128, GQA 4/2, a ragged length. Split runs three
    kernels (forward, dK/dV, dQ); dq_thread adds dQ inside the dK/dV kernel, so two."""
    kernels = _fwd_bwd_for_cuda(batch=1).count("stablehlo.custom_call @mosaic_gpu")
    assert kernels == {"split": 3, "dq_thread": 2}[backward_mode]


def test_rank_ordered_persistent_grids_lower_for_cuda_without_a_gpu(monkeypatch):
    """Three batch rows on 4 persistent CTAs by rank (the item's row and list from the rank order's
    index math) through the whole Mosaic GPU lowering at D = 128: a persistent forward, dK/dV and dQ."""
    monkeypatch.setitem(mosaic_backend.GRID, "forward", "persistent")
    monkeypatch.setitem(mosaic_backend.PERSISTENT_WORKERS, "count", 4)
    monkeypatch.setitem(mosaic_backend.ITEM_ORDER, "mode", "rank")
    assert _fwd_bwd_for_cuda(batch=3).count("stablehlo.custom_call @mosaic_gpu") == 3


@pytest.mark.parametrize("kernel", ["dkdv", "dq"])
def test_backward_loops_lower_for_cuda_without_a_gpu(kernel):
    """The backward loops' GPU forms (asynchronous wgmmas waited for one by one, 16-bit operands from
    registers, which interpret mode does not run): the Mosaic GPU lowering accepts them, 3 slots,
    GQA 4/2."""
    from longvila_jax.kernels import mosaic_backward

    shapes = [jax.ShapeDtypeStruct((1, 256, heads, 128), jnp.bfloat16) for heads in (4, 2, 2, 4)]
    shapes += [jax.ShapeDtypeStruct((1, 4, 2, 256), jnp.float32), jax.ShapeDtypeStruct((1, 2, 256), jnp.int32),
               jax.ShapeDtypeStruct((1, 2, 256), jnp.int32), jax.ShapeDtypeStruct((1, 2, 1, 32), jnp.int32)]

    def run(*args):
        return getattr(mosaic_backward, kernel)(*args, causal=True, scale=0.1, tuning=mosaic_backend.mc.Tuning(64, 3))

    module = jax.export.export(jax.jit(run), platforms=["cuda"])(*shapes).mlir_module()
    assert module.count("stablehlo.custom_call @mosaic_gpu") == 1


@pytest.mark.parametrize("backward_mode", ["dq_thread"], indirect=True)
@pytest.mark.parametrize("dq_thread_options", ["probe:no_add", "compute:208,thread2:88"], indirect=True)
def test_dq_thread_options_lower_for_cuda_without_a_gpu(backward_mode, dq_thread_options):
    """The dQ-thread kernel's GPU forms that interpret mode does not run as on a GPU (the probe without
    reduce-adds, another register split): the Mosaic GPU lowering accepts them, GQA 4/2."""
    shapes = [jax.ShapeDtypeStruct((1, 300, heads, 128), jnp.bfloat16) for heads in (4, 2, 2, 4)]
    shapes += [jax.ShapeDtypeStruct((1, 300), jnp.int32)] * 2

    def fwd_bwd(q, k, v, dout, seg, pos):
        _, vjp = jax.vjp(lambda *qkv: mosaic_backend.attention(*qkv, seg, seg, pos, pos, causal=True,
                                                               scale=0.1)[0], q, k, v)
        return vjp(dout)

    module = jax.export.export(jax.jit(fwd_bwd), platforms=["cuda"])(*shapes).mlir_module()
    assert module.count("stablehlo.custom_call @mosaic_gpu") == 2


def _mosaic_kernel_texts(monkeypatch, part="both"):
    """The Mosaic modules (name -> text, without debug info or dump counter) that lowering for CUDA produces
    with the backend's current options: D 128, GQA 4/2, 300 tokens (ragged), causal. ``part``: "both" a
    fwd+bwd through the custom VJP, "forward" the forward alone, "backward" the backward from a given out and
    lse (``attention_bwd``, the entry a ring step calls): a switch of one side lowers that side only."""
    from jax.experimental.mosaic.gpu import core as mosaic_core

    texts = {}
    serialize = mosaic_core._run_serde_pass  # where Mosaic hands the finished module to serialization

    def capture(module, **kwargs):
        text = module.operation.get_asm(enable_debug_info=False)
        name = re.match(r"module @(\w+)", text).group(1)
        texts[name] = re.sub(r'mosaic_gpu\.dump_basename = "[^"]*"', "", text)
        return serialize(module, **kwargs)

    monkeypatch.setattr(mosaic_core, "_run_serde_pass", capture)
    shapes = [jax.ShapeDtypeStruct((1, 300, heads, 128), jnp.bfloat16) for heads in (4, 2, 2, 4)]
    seg, pos = jnp.ones((1, 300), jnp.int32), jnp.arange(300, dtype=jnp.int32)[None]
    mask = (seg, seg, pos, pos)

    def forward(q, k, v, dout):
        return mosaic_backend.attention(q, k, v, *mask, causal=True, scale=0.1)

    def fwd_bwd(q, k, v, dout):
        _, vjp = jax.vjp(lambda *qkv: forward(*qkv, dout)[0], q, k, v)
        return vjp(dout)

    def backward(q, k, v, dout):
        out, lse = dout, jnp.zeros((1, 4, 300), jnp.float32)  # a given out and lse of the right shapes
        return mosaic_backend.attention_bwd(q, k, v, out, lse, dout, None, *mask, causal=True, scale=0.1)

    jax.clear_caches()  # the options are module state, not part of jit's cache key
    call = {"both": fwd_bwd, "forward": forward, "backward": backward}[part]
    jax.export.export(jax.jit(call), platforms=["cuda"])(*shapes)
    monkeypatch.setattr(mosaic_core, "_run_serde_pass", serialize)
    return texts


def _dq_thread_kernel_text(monkeypatch):
    return _mosaic_kernel_texts(monkeypatch, "backward")["attention_dkdv_dq_thread"]


@pytest.mark.parametrize("backward_mode", ["dq_thread"], indirect=True)
def test_every_dq_thread_option_reaches_the_kernel(backward_mode, monkeypatch):
    """Each non-default value of each dq_thread option changes the Mosaic module the kernel lowers to
    (a `staging` option once did not: Mosaic's transform inference swizzled its buffer regardless), and the
    defaults lowered twice give the same module (so a difference is the option's)."""
    from longvila_jax.kernels import mosaic_fused

    default = _dq_thread_kernel_text(monkeypatch)
    assert _dq_thread_kernel_text(monkeypatch) == default
    variants = [f"probe:{value}" for value in mosaic_fused.PROBES if value != "none"]
    variants.append("compute:224,thread2:56")
    assert mosaic_backend._DQ_THREAD_NAMES == ("compute", "thread2", "probe")  # none left out
    try:
        for spec in variants:
            mosaic_backend.set_dq_thread(spec)
            assert _dq_thread_kernel_text(monkeypatch) != default, spec
    finally:
        mosaic_backend.set_dq_thread("")


def test_every_backend_option_reaches_the_kernels(monkeypatch):
    """Each non-default value of each of the mosaic backend's switches (the forward's rescale and grid, mask
    tiles, backward) changes the Mosaic modules of the side it belongs to (the forward, or the backward from a
    given out and lse); the defaults lowered twice give the same modules, and a fwd+bwd through the custom VJP
    lowers the same modules as the two sides."""
    from longvila_jax.kernels import mosaic_rescale

    mb = mosaic_backend
    switches = [("forward", mb.set_forward_rescale, mb.FORWARD_RESCALE, mosaic_rescale.RESCALES),
                ("forward", mb.set_mask_tiles, mb.MASK_TILES, mb.MASK_TILE_MODES),
                ("backward", mb.set_mask_tiles, mb.MASK_TILES, mb.MASK_TILE_MODES),
                ("backward", mb.set_backward, mb.BACKWARD, ("dq_thread",))]  # "auto" runs split at 300 keys
    monkeypatch.setitem(mb.PERSISTENT_WORKERS, "count", 2)  # fewer than the 12 items: the forward is persistent
    default = {part: _mosaic_kernel_texts(monkeypatch, part) for part in ("forward", "backward")}
    assert _mosaic_kernel_texts(monkeypatch, "forward") == default["forward"]
    assert _mosaic_kernel_texts(monkeypatch, "both") == default["forward"] | default["backward"]
    other = next(mode for mode in mb.GRID_MODES if mode != mb.GRID["forward"])
    monkeypatch.setitem(mb.GRID, "forward", other)
    assert _mosaic_kernel_texts(monkeypatch, "forward") != default["forward"], f"forward grid: {other}"
    monkeypatch.setitem(mb.GRID, "forward", mb.DEFAULT_GRID["forward"])
    for part, setter, state, modes in switches:
        initial = state["mode"]
        try:
            for mode in modes:
                if mode != initial:
                    setter(mode)
                    assert _mosaic_kernel_texts(monkeypatch, part) != default[part], f"{setter.__name__}({mode!r})"
        finally:
            setter(initial)


def test_visit_lists_are_constants_when_the_ids_are_known_at_trace_time(rng):
    """Without segment ids (or with closed-over ones) the visit lists are computed while tracing,
    so the compiled step holds no sort for them; ids passed as arguments are planned in the step.
    Both give the same gradients."""
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(rng, 1, 256, 256, 2, 1, 64))
    seg = jnp.ones((1, 256), jnp.int32)
    pos = jnp.arange(256, dtype=jnp.int32)[None]

    def loss(q, k, v, *ids):
        s, p = ids or (seg, pos)
        out, _ = mosaic_backend.attention(q, k, v, s, s, p, p, causal=True, scale=0.125, interpret=INTERPRET)
        return jnp.sum(out.astype(jnp.float32))

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    assert "sort" not in step.lower(q, k, v).as_text()
    assert "sort" in step.lower(q, k, v, seg, pos).as_text()
    for a, b in zip(step(q, k, v), step(q, k, v, seg, pos)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_nothing_is_evaluated_while_tracing_inside_shard_map(rng):
    """JAX refuses eager ops on a mesh whose axes are manual: inside shard_map, flash_attention
    without ids keeps its default ids in the program (and gives what it gives outside), and a
    Mosaic plan of concrete ids is not computed while tracing."""
    from jax.sharding import PartitionSpec as P

    from longvila_jax.kernels import flash_attention

    mesh = jax.make_mesh((2,), ("x",))
    q, k, v = (jax.device_put(x, jax.NamedSharding(mesh, P("x"))) for x in random_qkv(rng, 2, 64, 64, 2, 1, 64))

    def attend(q, k, v):
        return flash_attention(q, k, v, impl="xla")[0]

    # check_vma=False as in sp.dispatch: the single-device kernels know nothing of manual axes
    sharded = jax.jit(jax.shard_map(attend, mesh=mesh, in_specs=P("x"), out_specs=P("x"), check_vma=False))
    np.testing.assert_allclose(np.asarray(sharded(q, k, v)), np.asarray(attend(q, k, v)), rtol=1e-5, atol=1e-5)
    seg = jnp.ones((1, 64), jnp.int32)
    pos = jnp.arange(64, dtype=jnp.int32)[None]
    static = []

    def plan(x):
        static.append(mosaic_backend._Plan(seg, seg, pos, pos, True).static)
        return x

    jax.jit(jax.shard_map(plan, mesh=mesh, in_specs=P("x"), out_specs=P("x")))(q)
    assert static == [False]
    assert mosaic_backend._Plan(seg, seg, pos, pos, True).static  # outside: planned while tracing


@pytest.mark.parametrize("mode", mosaic_backend.MASK_TILE_MODES)
def test_mask_tiles_mode_reaches_the_visit_lists(mode, monkeypatch):
    """``set_mask_tiles``: "positions" gives a plain causal call's diagonal tiles the positions-only kind
    in every kernel's lists, "full" gives them the full mask; the off-diagonal tiles stay whole."""
    monkeypatch.setitem(mosaic_backend.MASK_TILES, "mode", mode)
    length = 512
    seg = jnp.ones((1, length), jnp.int32)
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    arrays = mosaic_backend._Plan(seg, seg, pos, pos, True).arrays()
    diagonal = mosaic_plan.POSITIONS if mode == "positions" else mosaic_plan.FULL
    for lists in arrays[2:]:
        lists = np.asarray(lists).reshape(lists.shape[1], -1)
        kinds = np.concatenate([row[mosaic_plan.HEADER:mosaic_plan.HEADER + row[0]] & 3 for row in lists])
        assert set(kinds.tolist()) == {mosaic_plan.WHOLE, diagonal}
