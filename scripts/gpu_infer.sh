#!/usr/bin/env bash
# One device-machine call (nvidia-h200): the GPU kernel tests, then long-video generation on one GPU
# next to Hugging Face generate in the same run. Carry .whl (jax-triton, grain, array-record, portpicker).
#   GEN_ARGS overrides bench_generate.py's arguments; TEST_TIMEOUT and GEN_TIMEOUT bound each part.
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || { echo "install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, torch, transformers, jax_triton; print('jax', jax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'jax_triton', jax_triton.__version__)"
#   STEPS="generate tests" (the order they run in); TEST_FILTER picks test cases (pytest -k).
STEPS=${STEPS:-"tests generate"}
for step in $STEPS; do
  if [ "$step" = tests ]; then
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${TEST_TIMEOUT:-200} python3 -P -m pytest -q -p no:cacheprovider -n 4 \
      -m gpu ${TEST_FILTER:+-k "$TEST_FILTER"} tests/test_kernels_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
  elif [ "$step" = generate ]; then
    timeout ${GEN_TIMEOUT:-360} python3 scripts/bench_generate.py ${GEN_ARGS:---parts hf,1gpu,report --new-tokens 64} \
      --results "$OUT/bench_generate_results.json" 2>&1 | tee "$OUT/bench_generate.log" | grep -v "^W\|^I " | tail -30
  fi
done
