#!/usr/bin/env bash
# The next device calls for the kernels issue, in the order kernels/NOTES.md ("Next on a GPU") gives:
#   bash scripts/gpu_next.sh N      (through the device tool, from the repo root, .whl carried)
# 1: every Mosaic GPU test; (2, the forward's warpgroup ping-pong against the pipelined loop, ran as run BV; the
# ping-pong was removed in the seventeenth session); 3: the goal rows at 8k,
# 16k and 32k (plain and 4 packed samples) with the split backward and the dQ-thread kernel's 208/88
# register split beside the defaults (is 32k at 1.00x cuDNN, and does 208/88 win at 16k-32k, as in runs BI
# and BO, or not, as in run BP?); (4, the grids bench of the dQ kernel, went with its persistent grid in the
# eighteenth session); 5: a device profile of one 8k step, plain and 4
# packed samples, with dq_thread the 8k default (where the packed step's time goes now that no dQ kernel
# runs: the dK/dV-dQ kernel's 512 items against the split's 2,560; and what dq_thread's float32 dQ buffer
# costs outside the kernel: its zero fill and the final scale-and-cast).
# On an H100 (`nvidia-h100-x1`, the machine issue 4's acceptance names): accept and accept-tests ran there in
# runs BT and BU (with every backend's GPU tests), 2 in run BV. Next there: h100-packed, the default backward on
# packed calls (split below 32k on an H100 since runs BV-BW) beside dq_thread, 8k and 16k, plain and 4 packed
# samples (run BX); h100-32k: the 208/88 split at 8k and 32k causal in 6 interleaved rounds, with a device profile
# of one 32k step of mosaic and of JAX cuDNN (runs BY-BZ ran it with a dQ-start variant since removed).
# accept: the whole bench table in 3 interleaved rounds (mosaic, triton and JAX cuDNN; causal, full and 4
# packed samples of each; 8k and 32k; forward and fwd+bwd) with the PyTorch anchors (FlashAttention-2, cuDNN SDPA) and
# the matmul ceiling in the same run, and the packed causal samples as 4 batch items (causal-batch4: what the shorter
# samples cost every kernel, cuDNN's included, apart from what the packing costs);
# batch4: the goal rows at 8k and 32k with the causal-batch4 rows (ours and cuDNN's) in 3 interleaved rounds, then
# packed-profile's five profiles (for a machine other than the H100, whose accept call has these rows);
# packed-profile: device profiles of one 8k causal step, plain, 4 packed samples and the same samples as 4 batch
# items, ours and JAX cuDNN's (where the packed step's time goes against the batched one, kernel by kernel);
# power: each backend's 32k and 8k causal step run back to back, A B A B, with the SM clock and the power draw
# (does our 32k step lose its clock under the 700 W cap where cuDNN's keeps it: TFLOP/s per GHz);
# rescale: the forward's lazy row maxima (the default since the seventeenth session: warps whose rows kept their max
# skip the accumulator's rescale) against rescale every step (forward_rescale=always): the forward's ptxas report and
# PTX, the mosaic GPU tests of the rising-score inputs and against the reference, then 8k and 32k causal, plain and 4
# packed samples, in 4 interleaved rounds;
# rescale-power: the rising-score GPU tests alone, then both rescales and JAX cuDNN back to back under the power cap
# (32k and 8k causal);
# kv: the forward kernel alone at 32k, causal and full, beside itself with every visit list on key block 0 (no L2
# misses) and with K/V copied only for each item's first blocks (no copies from L2 either), 3 interleaved rounds:
# how much of the forward the K/V stream holds (is a cluster sharing K/V by TMA multicast worth building?);
# samples: the packed goal's question put to other kernels (nineteenth session): our causal rows (plain, 4 packed
# samples, the 4 samples as a batch) beside JAX cuDNN, then PyTorch's FlashAttention-2 and cuDNN SDPA on one
# sample against 4 batched ones, and FlashAttention-2's varlen kernel on 4 packed ones, 8k and 32k, each against
# its own plain rate (does any kernel keep 0.9 of its 8k rate on 2k samples?). Ran as run CR, whose varlen rows
# (no gradients) and 32k plain PyTorch rows (a reference too large) failed in the script, since fixed: next, on an
# H100, to time those rows;
# accept-tests: the GPU correctness tests of triton, cudnn and xla (1 covers mosaic);
# order: the persistent forward's items by rank across batch rows (the default for several short rows since the
# fourteenth session) against row after row (item_order=batch, the order of runs CA-CC), 4 rows of 2k and of 4k
# causal tokens, with the packed rows beside them, in 4 interleaved rounds (prediction in kernels/NOTES.md).
# (krows and krows-power, the dq_thread kernel with k in its own [keys, D] layout against k transposed, ran as runs
# CN-CO in the eighteenth session; the layout is the only one since, so those calls went with the option.)
# tests/test_gpu_next.py builds every Mosaic tuning named here on CPU, so that a typo or a broken
# option combination costs a test run, not device time.
set -uo pipefail
here=$(dirname "$0")
case "${1:-}" in
  1) STEPS="tests" LONGVILA_GPU_IMPLS=mosaic TEST_K="not 72" TEST_TIMEOUT=560 exec bash "$here/gpu_kernels.sh" ;;
  3) STEPS="bench" BENCH_TIMEOUT=560 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|backward=split|backward=dq_thread;dq_thread=compute:208,thread2:88 --seqs 8192,16384,32768 --masks causal,causal-packed4 --rounds 4 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  5) STEPS="profile" PROFILE_ARGS="--seq 8192 --mask causal|--seq 8192 --mask causal-packed4" exec bash "$here/gpu_kernels.sh" ;;
  accept) STEPS="anchor bench" BENCH_TIMEOUT=470 BENCH_ARGS="--impls mosaic,triton,jax-cudnn --seqs 8192,32768 --masks causal,full,causal-packed4,full-packed4,causal-batch4 --rounds 3 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  h100-packed) STEPS="bench" BENCH_TIMEOUT=300 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|backward=dq_thread --seqs 8192,16384 --masks causal,causal-packed4 --rounds 3 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  h100-32k) STEPS="bench profile" BENCH_TIMEOUT=330 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|backward=dq_thread;dq_thread=compute:208,thread2:88 --seqs 8192,32768 --masks causal --rounds 6 --budget-s 1" \
       PROFILE_LINES=22 PROFILE_ARGS="--seq 32768 --mask causal --steps 3 --top 8|--impl jax-cudnn --seq 32768 --mask causal --steps 3 --top 8" exec bash "$here/gpu_kernels.sh" ;;
  batch4) STEPS="bench profile" BENCH_TIMEOUT=300 BENCH_ARGS="--impls mosaic,jax-cudnn --seqs 8192,32768 --masks causal,causal-packed4,causal-batch4 --rounds 3 --budget-s 1" \
       PROFILE_LINES=14 PROFILE_ARGS="--seq 8192 --mask causal --steps 5 --top 8|--seq 8192 --mask causal-packed4 --steps 5 --top 8|--seq 8192 --mask causal-batch4 --steps 5 --top 8|--impl jax-cudnn --seq 8192 --mask causal --steps 5 --top 8|--impl jax-cudnn --seq 8192 --mask causal-batch4 --steps 5 --top 8" \
       exec bash "$here/gpu_kernels.sh" ;;
  packed-profile) STEPS="profile" PROFILE_LINES=14 PROFILE_ARGS="--seq 8192 --mask causal --steps 5 --top 8|--seq 8192 --mask causal-packed4 --steps 5 --top 8|--seq 8192 --mask causal-batch4 --steps 5 --top 8|--impl jax-cudnn --seq 8192 --mask causal --steps 5 --top 8|--impl jax-cudnn --seq 8192 --mask causal-batch4 --steps 5 --top 8" \
       exec bash "$here/gpu_kernels.sh" ;;
  power) STEPS="power" POWER_ARGS="--impls mosaic,jax-cudnn --seq 32768 --mask causal --seconds 10 --rounds 2|--impls mosaic,jax-cudnn --seq 8192 --mask causal --seconds 8 --rounds 2" \
       exec bash "$here/gpu_kernels.sh" ;;
  order) STEPS="bench" BENCH_TIMEOUT=400 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|item_order=batch --seqs 8192,16384 --masks causal,causal-packed4,causal-batch4 --rounds 4 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  rescale) STEPS="ptxas tests bench" PTX_KEEP=forward LONGVILA_GPU_IMPLS=mosaic TEST_K="rising or (match_reference and not 72)" TEST_TIMEOUT=200 \
       BENCH_TIMEOUT=300 BENCH_ARGS="--impls mosaic,jax-cudnn --mosaic-tuning=|forward_rescale=always --seqs 8192,32768 --masks causal,causal-packed4 --rounds 4 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  rescale-power) STEPS="tests power" LONGVILA_GPU_IMPLS=mosaic TEST_K="rising" TEST_TIMEOUT=300 \
       POWER_ARGS="--impls mosaic,mosaic[forward_rescale=always],jax-cudnn --seq 32768 --mask causal --seconds 8 --rounds 2|--impls mosaic,mosaic[forward_rescale=always],jax-cudnn --seq 8192 --mask causal --seconds 6 --rounds 2" \
       exec bash "$here/gpu_kernels.sh" ;;
  kv) STEPS="kernels" KERNEL_TIMEOUT=420 KERNEL_ARGS="--seqs 32768 --masks causal,full --kv-ablation --no-fused --rounds 3 --budget-s 1" \
       exec bash "$here/gpu_kernels.sh" ;;
  samples) STEPS="bench samples" BENCH_TIMEOUT=330 BENCH_ARGS="--impls mosaic,triton --seqs 8192,32768 --masks causal,causal-packed4,causal-batch4 --rounds 3 --budget-s 1" \
       SAMPLES_TIMEOUT=240 SAMPLES_ARGS="--seqs 8192,32768 --rounds 3 --budget-s 0.5" exec bash "$here/gpu_kernels.sh" ;;
  accept-tests) STEPS="tests" LONGVILA_GPU_IMPLS=triton,cudnn,xla TEST_TIMEOUT=560 exec bash "$here/gpu_kernels.sh" ;;
  *) echo "usage: bash scripts/gpu_next.sh accept|samples|accept-tests|rescale|rescale-power|kv|order|packed-profile|batch4|power|h100-packed|h100-32k|1|3|5 (see the comment at the top)" >&2; exit 2 ;;
esac
