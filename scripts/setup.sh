#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs longvila-jax (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 python3.12 python3; do
    # a pyenv shim can exist and still fail, so run each candidate
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.12 not found; install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  # a fresh .venv takes about 6.5 GB (PyPI's PyTorch brings CUDA libraries); say so before pip's OSError does
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
    echo "setup: warning: $((free_kb / 1024)) MB free under $(pwd); the new .venv needs about 6,500 MB" \
         "(and pip's downloads on top). Free some space if the install fails with 'No space left on device'." >&2
  fi
  "$PY" -m venv .venv
fi
# (grep drops this workplace's harmless "Location ... is ignored" warnings; pipefail keeps pip's status)
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -c "import jax, flax, longvila_jax; print('setup: jax', jax.__version__, 'flax', flax.__version__, 'ready')"
