#!/usr/bin/env bash
# One device-machine call (nvidia-h200-x2) for the sequence-parallel issue: bench_sp.py with the
# PyTorch context_parallel anchor in the same run. Carry .whl (jax-triton).  SP_ARGS overrides.
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || { echo "install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout ${SP_TIMEOUT:-500} python3 scripts/bench_sp.py ${SP_ARGS:---impl triton} 2>&1 | tee "$OUT/bench_sp.log" | grep -v "^W\|^I " | tail -45
