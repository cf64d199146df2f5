#!/usr/bin/env bash
# Several training processes on this machine, joined through jax.distributed.
#
#   scripts/launch_local.sh NPROC CONFIG [section.key=value ...]
#
# Process i gets LONGVILA_COORDINATOR=localhost:PORT, LONGVILA_NUM_PROCESSES=NPROC,
# LONGVILA_PROCESS_ID=i (read by longvila_jax.train.distributed).  With GPUs, each
# process owns GPUS/NPROC of them (LONGVILA_LOCAL_DEVICE_IDS); without, each simulates
# DEVICES_PER_PROCESS CPU devices (default 4) and the processes talk through gloo.
# Logs go to $LOG_DIR/process_<i>.log (default runs/launch_local); the script waits for
# all processes and fails if any fails.  PORT (default 12355) and PYTHON (default .venv/bin/python).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NPROC CONFIG [section.key=value ...]" >&2
  exit 2
fi
NPROC=$1; shift
CONFIG=$1; shift
PORT=${PORT:-12355}
PYTHON=${PYTHON:-.venv/bin/python}
LOG_DIR=${LOG_DIR:-runs/launch_local}
mkdir -p "$LOG_DIR"

GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
  GPUS=$(nvidia-smi --list-gpus | wc -l)
fi
if [ "$GPUS" -gt 0 ] && [ $((GPUS % NPROC)) -ne 0 ]; then
  echo "$GPUS GPUs do not divide among $NPROC processes" >&2
  exit 2
fi

pids=()
for ((i = 0; i < NPROC; i++)); do
  env_vars=(LONGVILA_COORDINATOR="localhost:$PORT" LONGVILA_NUM_PROCESSES="$NPROC" LONGVILA_PROCESS_ID="$i")
  if [ "$GPUS" -gt 0 ]; then
    per=$((GPUS / NPROC))
    ids=$(seq -s, $((i * per)) $(((i + 1) * per - 1)))
    env_vars+=(LONGVILA_LOCAL_DEVICE_IDS="$ids")
  else
    env_vars+=(JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}")
  fi
  env "${env_vars[@]}" "$PYTHON" -m longvila_jax.cli train "$CONFIG" "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $LOG_DIR/process_$i.log" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "all $NPROC processes finished; logs in $LOG_DIR"
exit $status
