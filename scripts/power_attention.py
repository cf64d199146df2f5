"""Attention steps run back to back under the GPU's power cap: rate, SM clock and power per backend.

    python scripts/power_attention.py --impls mosaic,jax-cudnn --seq 32768 --mask causal --seconds 10 --rounds 2

Each backend's forward+backward step (built as ``bench_attention.py`` builds its rows, on the same
tensors) runs back to back for ``--seconds`` while a thread reads the SM clock, the power draw and the
throttle reasons from ``nvidia-smi`` every ``--sample-s``. Rounds alternate the backends (A B A B), so a
warming GPU weighs on each alike. Printed per backend and round: fwd+bwd TFLOP/s, the median SM clock
and power over the window, and TFLOP/s per GHz, the work done per clock cycle. Two backends that differ
only in the clock the power cap leaves them are level in that last column; one that draws more power
per tile runs at a lower clock. Without ``nvidia-smi`` (on CPU) the clock and power columns say
``n/a`` and the rates remain (a smoke run; the figures mean nothing there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import jax

sys.path.insert(0, os.path.dirname(__file__))  # run as ``python -P``, the script's folder is not on the path
import bench_attention as ba  # noqa: E402

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


class GpuReading(NamedTuple):
    mhz: float  # SM clock
    watts: float
    celsius: float
    reasons: str  # throttle reasons, a bit mask (0x4: the software power cap)

    def __str__(self):
        return (f"SM clock, power, temperature, throttle reasons: {self.mhz:.0f} MHz, {self.watts:.2f} W, "
                f"{self.celsius:.0f} C, {self.reasons}")


def read_gpu() -> GpuReading | None:
    """GPU 0 now, or None without a readable ``nvidia-smi`` (on CPU)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = [f.strip() for f in out.stdout.strip().split(",")]
    try:
        return GpuReading(float(fields[0]), float(fields[1]), float(fields[2]), fields[3])
    except (IndexError, ValueError):
        return None


class Sampler:
    """Reads the GPU every ``period`` seconds on a thread between ``start()`` and ``stop()``."""

    def __init__(self, period: float):
        self.period, self.readings, self._done = period, [], threading.Event()

    def _run(self):
        while not self._done.is_set():
            reading = read_gpu()
            if reading is None:
                return
            self.readings.append(reading)
            self._done.wait(self.period)

    def start(self):
        self.readings, self._done = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._done.set()
        self._thread.join()
        return self.readings


def build_step(impl: str, seq: int, mask: str, tensors):
    """``(jitted fwd+bwd step, its arguments, fwd+bwd FLOPs)``, compiled under ``impl``'s tuning."""
    f, (q, k, v, dout), tokens, flops = ba.mask_call(ba.use_impl(impl), seq, mask, tensors, ba.XLA_TILE, ba.XLA_TILE)
    step = jax.jit(ba.fwd_bwd_fn(f))
    args = (q, k, v, dout, *tokens)
    jax.block_until_ready(step(*args))  # compile now, under this impl's tuning
    return step, args, 3.5 * flops


def sustain(step, args, seconds: float, queue: int = 8):
    """Seconds per step of ``step(*args)`` run back to back for about ``seconds`` (at most ``queue`` steps
    in flight: the host waits on the oldest before it dispatches more)."""
    jax.block_until_ready(step(*args))
    pending, calls = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or calls == 0:
        pending.append(step(*args))
        calls += 1
        if len(pending) > queue:
            jax.block_until_ready(pending.pop(0))
    jax.block_until_ready(pending)
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impls", default="mosaic,jax-cudnn",
                        help="backends (with tunings as in bench_attention.py: mosaic[SPEC]), or jax-cudnn")
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--mask", default="causal", help="as in bench_attention.py (causal, full, causal-packed4, ...)")
    parser.add_argument("--seconds", type=float, default=10.0, help="back-to-back steps per backend and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sample-s", type=float, default=0.25, help="seconds between two nvidia-smi readings")
    args = parser.parse_args()
    ba.check_length(args.mask, args.seq)  # a bad mask or length stops here, before any compile
    if args.seconds <= 0 or args.rounds < 1 or args.sample_s <= 0:
        raise SystemExit(f"--seconds and --sample-s must be positive and --rounds at least 1, got {args.seconds}, "
                         f"{args.sample_s}, {args.rounds}")

    tensors = ba.inputs(args.seq)
    impls = [i for i in args.impls.split(",") if i]
    steps = {impl: build_step(impl, args.seq, args.mask, tensors) for impl in impls}
    sampler = Sampler(args.sample_s)
    print(f"# {jax.devices()[0].device_kind}; jax {jax.__version__}; S={args.seq} {args.mask}; {args.seconds:g} s "
          f"per backend and round, nvidia-smi every {args.sample_s:g} s")
    print("| impl | round | fwd+bwd TFLOP/s | ms per step | SM MHz (median) | W (median) | TFLOP/s per GHz "
          "| readings | throttle reasons seen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for round_ in range(args.rounds):
        for impl in impls:
            step, step_args, flops = steps[impl]
            sampler.start()
            seconds = sustain(step, step_args, args.seconds)
            readings = sampler.stop()
            tflops = flops / seconds / 1e12
            if readings:
                mhz = statistics.median(r.mhz for r in readings)
                watts = statistics.median(r.watts for r in readings)
                clock = f"{mhz:.0f} | {watts:.0f} | {tflops / (mhz / 1e3):.4g}"
                reasons = ", ".join(sorted({r.reasons for r in readings}))
            else:
                clock, reasons = "n/a | n/a | n/a", "n/a"
            print(f"| {impl} | {round_ + 1} | {tflops:.4g} | {seconds * 1e3:.4g} | {clock} | {len(readings)} "
                  f"| {reasons} |", flush=True)


if __name__ == "__main__":
    main()
