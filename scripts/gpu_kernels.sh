#!/usr/bin/env bash
# One device-machine call for the kernels issue: GPU correctness tests, the PyTorch anchors
# (FlashAttention-2 and cuDNN through SDPA), then the attention benchmark.
# Run through the device tool from the repo root with .whl (the jax-triton wheel) carried.
#   STEPS="tests anchor bench"  BENCH_ARGS="--impls triton,cudnn --budget-s 2"
#   BENCH_ARGS="--impls mosaic,cudnn --mosaic-tuning=backward=split|backward=dq_thread" (no quotes inside
#     BENCH_ARGS: it is split on spaces, so quotes would reach the script as literal characters)
#   LONGVILA_GPU_IMPLS=mosaic (backends the tests check)  TEST_K="not 72" (pytest -k)
#   STEPS="rowstats" (scripts/bench_row_stats.py)
#   STEPS="samples"  SAMPLES_ARGS="--seqs 8192 --rounds 3" (scripts/anchor_sample_length.py: what shorter samples
#     cost PyTorch's FlashAttention-2, varlen FlashAttention-2 and cuDNN SDPA, each against its own plain rate)
#   STEPS="profile"  PROFILE_ARGS="--seq 8192 --mask causal|--seq 8192 --mask causal-packed4"
#     (scripts/profile_attention.py once per '|'-separated argument set)
#   STEPS="power"  POWER_ARGS="--seq 32768 --mask causal|--seq 8192 --mask causal" (scripts/power_attention.py once per
#     '|'-separated argument set: rate, SM clock and power of steps run back to back under the power cap)
#   STEPS="kernels ptxas"  KERNEL_ARGS="--seqs 32768 --masks causal --dq-write-variants"
#     kernels: scripts/bench_mosaic_kernels.py; ptxas: each Mosaic kernel's ptxas report (registers,
#     spills, wgmma serialization), compiled once at S = 1024; PTXAS_SCRIPT="scripts/bench_attention.py
#     --seqs 1024 --impls mosaic --masks causal --mosaic-tuning=backward=dq_thread" compiles
#     what that script runs instead; PTX_KEEP=dkdv also brings back those kernels' PTX (offline register
#     splits: scripts/ptxas_registers.py)
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-"tests anchor bench"}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || { echo "install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, triton, jax_triton; print('jax', jax.__version__, 'triton', triton.__version__, 'jax_triton', jax_triton.__version__, jax.devices())"
if [[ " $STEPS " == *" tests "* ]]; then
  # four workers share the GPU (compilation dominates); no preallocation so they fit together;
  # no -q here: with setup.cfg's -q it would hide the pass/fail summary line
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${TEST_TIMEOUT:-420} python3 -P -m pytest -p no:cacheprovider -n 4 \
    -m gpu -k "${TEST_K:-}" tests/test_kernels_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [[ " $STEPS " == *" anchor "* ]]; then
  timeout 180 python3 scripts/anchors/anchor_attention.py torch 2>&1 | tee "$OUT/anchor_torch.log" | grep -v "^torch " | tail -20
fi
if [[ " $STEPS " == *" anchor-jax "* ]]; then  # stock JAX kernels: Pallas Triton/Mosaic GPU, cuDNN, XLA
  OUT="$OUT" timeout ${ANCHOR_TIMEOUT:-240} python3 scripts/anchors/anchor_attention.py jax 2>&1 | tee "$OUT/anchor_jax.log" | tail -40
fi
if [[ " $STEPS " == *" bench "* ]]; then
  timeout ${BENCH_TIMEOUT:-300} python3 scripts/bench_attention.py ${BENCH_ARGS:-} --json "$OUT/bench_attention.json" \
    --plot "$OUT/bench_attention.png" 2>&1 \
    | tee "$OUT/bench_attention.log" | tail -40
fi
if [[ " $STEPS " == *" samples "* ]]; then  # PyTorch's kernels, one sample of S against N of S / N (and packed)
  timeout ${SAMPLES_TIMEOUT:-240} python3 scripts/anchor_sample_length.py ${SAMPLES_ARGS:-} --json "$OUT/samples.json" 2>&1 \
    | tee "$OUT/anchor_sample_length.log" | tail -20
fi
if [[ " $STEPS " == *" rowstats "* ]]; then
  timeout 120 python3 scripts/bench_row_stats.py ${ROWSTATS_ARGS:-} 2>&1 | tee "$OUT/bench_row_stats.log" | tail -10
fi
if [[ " $STEPS " == *" profile "* ]]; then
  IFS='|' read -ra profiles <<< "${PROFILE_ARGS:---seq 8192 --mask causal-packed4}"
  for i in "${!profiles[@]}"; do
    timeout ${PROFILE_TIMEOUT:-120} python3 scripts/profile_attention.py ${profiles[$i]} 2>&1 \
      | tee "$OUT/profile_$i.log" | grep -v "^WARNING" | tail -${PROFILE_LINES:-30}
  done
fi
if [[ " $STEPS " == *" power "* ]]; then
  IFS='|' read -ra powers <<< "${POWER_ARGS:---seq 32768 --mask causal}"
  for i in "${!powers[@]}"; do
    timeout ${POWER_TIMEOUT:-200} python3 scripts/power_attention.py ${powers[$i]} 2>&1 \
      | tee "$OUT/power_$i.log" | grep -v "^WARNING" | tail -20
  done
fi
if [[ " $STEPS " == *" kernels "* ]]; then
  timeout ${KERNEL_TIMEOUT:-300} python3 scripts/bench_mosaic_kernels.py ${KERNEL_ARGS:-} 2>&1 \
    | tee "$OUT/bench_mosaic_kernels.log" | tail -40
fi
if [[ " $STEPS " == *" ptxas "* ]]; then
  dump=/tmp/mosaic_dump; rm -rf "$dump"; mkdir -p "$dump"
  MOSAIC_GPU_DUMP_TO="$dump" MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 python3 \
    ${PTXAS_SCRIPT:-scripts/bench_mosaic_kernels.py --seqs 1024 --budget-s 0.01} ${PTXAS_ARGS:-} \
    > "$OUT/ptxas_run.log" 2>&1 || tail -5 "$OUT/ptxas_run.log"
  ls "$dump" | head -40 > "$OUT/ptxas_files.txt"
  for f in "$dump"/*.ptxas; do  # one block per kernel compiled: registers, spills, wgmma serialization
    echo "== $(basename "$f")"; grep -E "registers|spill|serializ" "$f" | sort | uniq -c | cut -c1-240
  done > "$OUT/ptxas_summary.txt" 2>&1
  head -80 "$OUT/ptxas_summary.txt"  # (a pipe into head would cut the file short)
  if [[ -n "${PTX_KEEP:-}" ]]; then  # the PTX of kernels whose name holds PTX_KEEP, for scripts/ptxas_registers.py
    cp "$dump"/*"${PTX_KEEP}"*.ptx "$OUT"/ 2>/dev/null || echo "no PTX matching $PTX_KEEP"
  fi
fi
