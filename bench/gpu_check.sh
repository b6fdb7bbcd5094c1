#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): the engine on CUDA, its speed, packed trials and a short
# seed-protocol run, in one table. PyTorch is all it needs. --dry-run: the same steps on the
# CPU at toy size (CI runs it).
#   bench/gpu_check.sh [--dry-run] [--data-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" bench/gpu_check.py "$@"
