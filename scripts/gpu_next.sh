#!/usr/bin/env bash
# The next device calls for the kernels issue, in the order kernels/NOTES.md ("Next on a GPU") gives:
#   bash scripts/gpu_next.sh N      (through the device tool, from the repo root, .whl carried)
# 1: every Mosaic GPU test; 2: 16k and 32k, the default dQ-thread backward against its 208/88 register split
# (does 32k stay at 1.00x cuDNN?); 3: 4k and 8k, split against dq_thread (where DQ_THREAD_FROM belongs);
# 4: the grids bench (dQ alone per block, persistent, prefetching the next item; the whole step);
# 5: each kernel alone with exp2 replaced by one FMA (how much of its time the exponentials hold);
# 6: 8k and 32k, a quarter and a half of each tile's exp2 by the polynomial (kernels/mosaic_exp2.py).
# tests/test_gpu_next.py builds every Mosaic tuning named here on CPU, so that a typo or a broken
# option combination costs a test run, not device time.
set -uo pipefail
here=$(dirname "$0")
case "${1:-}" in
  1) STEPS="tests" LONGVILA_GPU_IMPLS=mosaic TEST_K="not 72" TEST_TIMEOUT=560 exec bash "$here/gpu_kernels.sh" ;;
  2) STEPS="bench" BENCH_TIMEOUT=560 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|backward=dq_thread;dq_thread=compute:208,thread2:88 --seqs 16384,32768 --masks causal,causal-packed4 --rounds 5 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  3) STEPS="bench" BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=backward=split|backward=dq_thread --seqs 4096,8192 --masks causal,causal-packed4 --rounds 5 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  4) STEPS="grid" GRID_TIMEOUT=560 GRID_ARGS="--seqs 8192 --masks causal,causal-packed4 --rounds 3" \
       exec bash "$here/gpu_kernels.sh" ;;
  5) STEPS="kernels" KERNEL_TIMEOUT=560 KERNEL_ARGS="--seqs 8192,32768 --masks causal,causal-packed4 --no-fused --exp-ablation --budget-s 1.5" \
       exec bash "$here/gpu_kernels.sh" ;;
  6) STEPS="bench" BENCH_TIMEOUT=560 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|exp2=poly:0.25|exp2=poly:0.5 --seqs 8192,32768 --masks causal,causal-packed4 --rounds 3 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  *) echo "usage: bash scripts/gpu_next.sh 1|2|3|4|5|6 (see the comment at the top)" >&2; exit 2 ;;
esac
