"""What shorter samples cost PyTorch's fused attention: one causal sequence of S tokens against the same
tokens as N samples of S / N, each kernel's rate against its own one-sample rate.

    python scripts/anchor_sample_length.py --seqs 8192,32768 --rounds 3 --json /tmp/out/samples.json

The question is issue 4's packed goal (``mosaic`` on 4 packed samples at 0.9 of its own plain rate):
does any other kernel keep 0.9 of its 8k rate on 2k samples? Rows, per S (B = 1, Hq = 32, Hkv = 8,
D = 128, bf16, causal):

* ``flash`` / ``cudnn``: ``scaled_dot_product_attention`` under that SDPA backend, layout ``plain``
  ``[1, H, S, D]`` and ``batch`` ``[N, H, S / N, D]`` (the same tensors, reshaped);
* ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention-2's variable-length kernel),
  ``plain`` (one sample) and ``packed`` (N samples in one ``[S, H, D]`` row, told apart by cumulative
  lengths: the packed layout itself);
* ``math`` (``--device cpu`` only, for the CPU test of this script): SDPA's unfused math backend.

FLOPs as ``shared/bench/anchor_attention.py`` counts them: causal ``4 * S^2 * H * D / 2`` per sample,
forward+backward 3.5x that. ``--rounds`` times every row once per round, in turn, so a drifting clock
hits all alike; each row prints its fwd+bwd rate over its own plain row's, as a ratio of medians and
as the median of the per-round ratios. Every row's output is first checked against a float32 reference
on the first sample's first 2,048 tokens (the layouts must compute the same attention).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "anchors"))
import anchor_attention  # noqa: E402  (shared/bench's script: its FLOP count)

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "math": SDPBackend.MATH}
LAYOUTS = {"flash": ("plain", "batch"), "cudnn": ("plain", "batch"), "math": ("plain", "batch"),
           "varlen": ("plain", "packed")}


def causal_flops(length, n_samples, heads, head_dim, backward):
    """Visible FLOPs of ``n_samples`` causal samples of ``length / n_samples`` tokens (forward, or
    forward+backward at 3.5x): the anchors' own count, samples as batch items."""
    return anchor_attention.flops(n_samples, heads, length // n_samples, head_dim, True, backward)


def cumulative_lengths(length, n_samples, device):
    """``[0, S/N, 2S/N, ..., S]`` int32: the samples' bounds in a packed row (varlen's ``cu_seq``)."""
    if length % n_samples:
        raise ValueError(f"--seqs: {length} tokens do not split into {n_samples} samples of equal length")
    return torch.arange(0, length + 1, length // n_samples, dtype=torch.int32, device=device)


def varlen_call():
    """``f(q, k, v, cu, max_len) -> out`` over FlashAttention-2's varlen kernel, q ``[T, Hq, D]``, k and v
    ``[T, Hkv, D]``, causal; GQA natively where this PyTorch takes ``enable_gqa``, else K/V heads
    repeated (then the call reads 4x the K/V bytes; its FLOPs are the same)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}

    def call(q, k, v, cu, max_len):
        if "enable_gqa" in params:
            extra = {"enable_gqa": True}
        else:
            group = q.shape[1] // k.shape[1]
            k, v, extra = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), {}
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, **causal, **extra)

    return call


def layout_call(impl, layout, length, n_samples, tensors):
    """``(f, args, samples)``: ``f(*args) -> out`` for one row, ``args`` the row's views of the shared
    ``[S, H, D]`` tensors (q, k, v), and the row's sample count."""
    q, k, v = tensors
    n = 1 if layout == "plain" else n_samples
    if impl == "varlen":
        cu = cumulative_lengths(length, n, q.device)
        f = varlen_call()
        return (lambda q, k, v: f(q, k, v, cu, length // n)), tuple(x.detach().requires_grad_() for x in tensors), n

    def heads_first(x):  # [S, H, D] -> [N, H, S / N, D]
        return x.reshape(n, length // n, *x.shape[1:]).transpose(1, 2)

    backend = SDPA_BACKENDS[impl]

    def f(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])

    return f, tuple(heads_first(x).detach().requires_grad_() for x in tensors), n


CHECK_TOKENS = 2048  # the reference checks a sample's first tokens (causal: they see no later key)


def sample_tokens(out, impl, per):
    """The first sample's first ``per`` output rows as ``[per, H, D]`` float32."""
    if impl == "varlen":
        return out[:per].float()
    return out[0].transpose(0, 1)[:per].float()


def reference(tensors, per):
    """float32 causal attention of the first ``per`` tokens (of one sample), ``[per, Hq, D]``."""
    q, k, v = (x[:per].float() for x in tensors)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    mask = torch.ones(per, per, dtype=torch.bool, device=q.device).tril()
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


class Row:
    """One (impl, layout) at one length: its forward and fwd+bwd calls and their timings (ms per call)."""

    def __init__(self, impl, layout, length, n_samples, tensors, budget_s):
        self.impl, self.layout, self.length = impl, layout, length
        self.f, self.args, self.n = layout_call(impl, layout, length, n_samples, tensors)
        self.budget_s = budget_s
        self.dout = torch.randn_like(self.f(*self.args))
        self.ms = {"fwd": [], "fwd_bwd": []}
        self.calls = {"fwd": 1, "fwd_bwd": 1}

    def rel_err(self, tensors):
        per = min(self.length // self.n, CHECK_TOKENS)
        want = reference(tensors, per)
        with torch.no_grad():
            got = sample_tokens(self.f(*self.args), self.impl, per)
        return float((got - want).norm() / want.norm())

    def run(self, kind):
        if kind == "fwd":
            with torch.no_grad():
                self.f(*self.args)
        else:
            self.f(*self.args).backward(self.dout)

    def sample(self, kind):
        """Time one batch of calls; the batch is sized on the first round to about ``budget_s``."""
        device = self.args[0].device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.run(kind)
        sync()
        if not self.ms[kind]:  # size the batch: calls that fill the budget, at least 1
            start = time.perf_counter()
            self.run(kind)
            sync()
            self.calls[kind] = max(1, int(self.budget_s / max(time.perf_counter() - start, 1e-6)))
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(self.calls[kind]):
                self.run(kind)
            end.record()
            torch.cuda.synchronize()
            self.ms[kind].append(begin.elapsed_time(end) / self.calls[kind])
        else:
            start = time.perf_counter()
            for _ in range(self.calls[kind]):
                self.run(kind)
            self.ms[kind].append((time.perf_counter() - start) * 1e3 / self.calls[kind])
        for x in self.args:
            x.grad = None

    def tflops(self, kind, ms):
        return causal_flops(self.length, self.n, Q_HEADS, HEAD_DIM, kind == "fwd_bwd") / ms / 1e9


def main():
    global Q_HEADS, KV_HEADS, HEAD_DIM
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--samples", type=int, default=4, help="samples per sequence in the batch / packed rows")
    parser.add_argument("--impls", default="flash,cudnn,varlen", help=f"of {sorted(LAYOUTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=0.5, help="seconds per timed batch of calls")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (the math backend: for the tests)")
    parser.add_argument("--heads", type=int, default=Q_HEADS)
    parser.add_argument("--kv-heads", type=int, default=KV_HEADS)
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    Q_HEADS, KV_HEADS, HEAD_DIM = args.heads, args.kv_heads, args.head_dim
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in LAYOUTS]
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; choose from {sorted(LAYOUTS)}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be 1 or more, got {args.rounds}")
    if args.samples < 1:
        raise SystemExit(f"--samples must be 1 or more, got {args.samples}")
    lengths = [int(s) for s in args.seqs.split(",")]
    for length in lengths:  # a bad length stops here, before any timing
        try:
            cumulative_lengths(length, args.samples, "cpu")
        except ValueError as e:
            raise SystemExit(str(e)) from None
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}; torch {torch.__version__}; Hq={Q_HEADS} Hkv={KV_HEADS} D={HEAD_DIM} {dtype}; causal; "
          f"{args.samples} samples per sequence")
    print("| impl | S | layout | samples | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd / own plain "
          "| per round (median, range) | rel err vs float32 | ms (fwd / fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for length in lengths:
        gen = torch.Generator(device=device).manual_seed(length)
        tensors = tuple(torch.randn(length, h, HEAD_DIM, device=device, dtype=dtype, generator=gen)
                        for h in (Q_HEADS, KV_HEADS, KV_HEADS))
        rows, errors = [], {}
        for impl in impls:
            for layout in LAYOUTS[impl]:
                try:
                    row = Row(impl, layout, length, args.samples, tensors, args.budget_s)
                    errors[id(row)] = row.rel_err(tensors)
                    rows.append(row)
                except Exception as e:  # report and go on: one backend must not hide the rest
                    print(f"| {impl} | {length} | {layout} | failed: {type(e).__name__}: {str(e)[:160]} |")
        for _ in range(args.rounds):
            for row in rows:
                for kind in ("fwd", "fwd_bwd"):
                    try:
                        row.sample(kind)
                    except Exception as e:
                        print(f"# {row.impl} {length} {row.layout} {kind} failed: {type(e).__name__}: {str(e)[:160]}")
                        row.ms[kind].append(float("nan"))
        for row in rows:
            plain = next((r for r in rows if r.impl == row.impl and r.layout == "plain"), None)
            med = {k: statistics.median(v) for k, v in row.ms.items()}
            rate = {k: row.tflops(k, med[k]) for k in med}
            record = dict(impl=row.impl, seq=length, layout=row.layout, samples=row.n, fwd_tflops=rate["fwd"],
                          fwd_bwd_tflops=rate["fwd_bwd"], fwd_ms=med["fwd"], fwd_bwd_ms=med["fwd_bwd"],
                          fwd_bwd_ms_samples=row.ms["fwd_bwd"], rel_err=errors[id(row)], own_plain=None,
                          own_plain_rounds=[])
            if plain is not None and plain is not row:
                plain_rate = plain.tflops("fwd_bwd", statistics.median(plain.ms["fwd_bwd"]))
                record["own_plain"] = rate["fwd_bwd"] / plain_rate
                record["own_plain_rounds"] = [row.tflops("fwd_bwd", mine) / plain.tflops("fwd_bwd", theirs)
                                              for mine, theirs in zip(row.ms["fwd_bwd"], plain.ms["fwd_bwd"])]
            results.append(record)
            rounds = record["own_plain_rounds"]
            per_round = (f"{statistics.median(rounds):.3f} ({min(rounds):.3f}-{max(rounds):.3f})" if rounds else "-")
            own = "-" if record["own_plain"] is None else f"{record['own_plain']:.2f}"
            print(f"| {row.impl} | {length} | {row.layout} | {row.n} | {rate['fwd']:.1f} | {rate['fwd_bwd']:.1f} "
                  f"| {own} | {per_round} | {record['rel_err']:.1e} | {med['fwd']:.3f} / {med['fwd_bwd']:.3f} |",
                  flush=True)
        del rows, tensors
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=name, torch=torch.__version__, rows=results), fh, indent=1)


if __name__ == "__main__":
    main()
