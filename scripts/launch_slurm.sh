#!/usr/bin/env bash
# Multi-node training under SLURM: one task per node, each owning all GPUs of its node.
#
#   sbatch --nodes=4 scripts/launch_slurm.sh longvila-8b/long_sft [section.key=value ...]
#
# jax.distributed.initialize() reads the coordinator, process count and process id from
# the SLURM variables (longvila_jax.train.distributed).  Put `ulysses` inside a node and
# `ring` across nodes (configs/train/*/long_sft.json).  SIGTERM from scancel or a time
# limit (--signal) makes every process save a checkpoint at the same step and exit;
# resubmitting the same command resumes from it.
#SBATCH --job-name=longvila-jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=TERM@300
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch [--nodes=N] $0 CONFIG [section.key=value ...]" >&2
  exit 2
fi
PYTHON=${PYTHON:-.venv/bin/python}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
# Forward SIGTERM to the tasks (srun passes it on) and wait for their clean exit.
srun --kill-on-bad-exit=1 "$PYTHON" -m longvila_jax.cli train "$@"
