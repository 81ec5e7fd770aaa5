#!/usr/bin/env bash
# The GPU check in one command, for anyone with a CUDA machine (bench/gpu_check.py says what it runs):
#   bench/gpu_check.sh                  # chapters on CUDA, CPU against CUDA, the engine benches
#   bench/gpu_check.sh --skip-benches   # the first two only
# Exits 2 with one line when no CUDA device is present. The report for bench/README.md is written to
# _build/gpu-check/gpu_check.md and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" bench/gpu_check.py "$@"
