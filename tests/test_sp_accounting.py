"""Communication accounting and the (ring, ulysses) planner, against hand arithmetic."""

import pathlib
import runpy

import pytest

from longvila_jax.sp import comm_bytes
from longvila_jax.sp.plan import candidates, predict, recommend

BF16 = 2


def test_ring_bytes_count_unreplicated_kv_and_float32_grads():
    # B=1, S=1024, GQA 8/2, D=16, ring 4: each rank holds 256 tokens.
    kv_piece = 256 * 2 * 16 * BF16  # one of k or v on one rank
    tokens = 256 * 8  # int32 ids + int32 positions
    dkv_piece = 256 * 2 * 16 * 4
    sent = comm_bytes(batch=1, seq_len=1024, q_heads=8, kv_heads=2, head_dim=16, ring=4, ulysses=1)
    assert sent.ring_forward == 3 * (2 * kv_piece + tokens)
    assert sent.ring_backward == 3 * (2 * kv_piece + tokens) + 4 * 2 * dkv_piece
    assert sent.ulysses_forward == sent.ulysses_backward == 0


def test_ulysses_bytes_repeat_kv_heads_only_to_the_ulysses_size():
    # B=1, S=1024, GQA 8/2, D=16, ulysses 4: K/V go to lcm(2, 4) = 4 heads, not 8.
    q_piece = 256 * 8 * 16 * BF16
    kv_piece = 256 * 4 * 16 * BF16
    heads = (2 * q_piece + 2 * kv_piece) * 3 // 4  # an all-to-all keeps 1/4 at home
    sent = comm_bytes(batch=1, seq_len=1024, q_heads=8, kv_heads=2, head_dim=16, ring=1, ulysses=4)
    assert sent.ulysses_forward == heads + 3 * 256 * 8
    assert sent.ulysses_backward == heads
    assert sent.ring_forward == sent.ring_backward == 0


def test_2d_ring_carries_the_ulysses_head_share():
    # ring 2 x ulysses 4, MHA 8: each ring member sends its 512 tokens of 8/4 = 2 K/V heads.
    sent = comm_bytes(batch=2, seq_len=1024, q_heads=8, kv_heads=8, head_dim=16, ring=2, ulysses=4)
    assert sent.ring_forward == 2 * 512 * (2 * 2 * 16 * BF16 + 8)
    gqa = comm_bytes(batch=2, seq_len=1024, q_heads=32, kv_heads=8, head_dim=16, ring=2, ulysses=1)
    mha = comm_bytes(batch=2, seq_len=1024, q_heads=32, kv_heads=32, head_dim=16, ring=2, ulysses=1)
    assert gqa.ring_backward < mha.ring_backward / 3.9  # K/V travel un-replicated under GQA


def test_accounting_rejects_bad_shapes():
    with pytest.raises(ValueError, match="query heads 6 must be divisible by the ulysses size 4"):
        comm_bytes(batch=1, seq_len=1024, q_heads=6, kv_heads=2, head_dim=16, ring=1, ulysses=4)


COMMON = dict(batch=1, head_dim=128, kernel_tflops=550.0, intra_bw=346.0, intra_a2a_bw=285.0, inter_bw=25.0)


def test_two_gpu_prediction_is_near_the_kernel_rate():
    """At 128k on 2 GPUs both schemes hide or amortize their traffic (ANCHORS: torch CP reaches 514)."""
    for ring, ulysses in [(2, 1), (1, 2)]:
        p = predict(ring=ring, ulysses=ulysses, seq_len=131072, q_heads=32, kv_heads=32, devices_per_host=2,
                    **COMMON)
        assert 0.95 * 550 < p.tflops_per_device < 550


def test_planner_keeps_ulysses_inside_a_host_and_rings_across_hosts():
    preds = recommend(devices=16, seq_len=262144, q_heads=32, kv_heads=8, devices_per_host=8,
                      **{**COMMON, "kernel_tflops": 550.0, "inter_bw": 5.0})
    best = preds[0]
    assert best.ulysses <= 8 and 8 % best.ulysses == 0
    assert best.seconds <= min(p.seconds for p in preds)
    ulysses_across = [p for p in preds if p.ulysses == 16]
    assert ulysses_across and ulysses_across[0].seconds > best.seconds


def test_exposed_ring_traffic_when_compute_is_short():
    """Tiny sequences: the per-step compute cannot hide the K/V transfer, and the model says so."""
    p = predict(ring=8, ulysses=1, seq_len=8192, q_heads=32, kv_heads=32, devices_per_host=8,
                **{**COMMON, "intra_bw": 1.0})
    assert p.ring_exposed_s > p.compute_s


def test_candidates_respect_heads_and_zigzag():
    assert candidates(8, q_heads=12, seq_len=4096) == [(8, 1), (4, 2), (2, 4)]
    assert (1, 8) in candidates(8, q_heads=8, seq_len=4096)


def test_plan_script_prints_a_recommendation(capsys):
    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "sp_plan.py"
    main = runpy.run_path(str(script))["main"]
    preds = main(["--heads", "32", "--kv-heads", "32", "--seq", "131072", "--devices-per-host", "2",
                  "--kernel-tflops", "552", "--compare-anchor"])
    out = capsys.readouterr().out
    assert "recommended: ring=" in out and "measured anchor" in out
    assert {(p.ring, p.ulysses) for p in preds} == {(2, 1), (1, 2)}
