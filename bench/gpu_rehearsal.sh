#!/usr/bin/env bash
# The GPU check rehearsed as the device machine runs it (CI runs this): a copy of what the device
# gets (git's tracked and untracked-not-ignored files; none of .venv, outputs or the editable
# install), a virtual environment holding PyTorch and NumPy only (no Ray, MLflow, Optuna nor
# this project), the data in a carried folder (.fmnist, as `make gpu-data` makes it). Two runs:
#   1. bench/gpu_check.sh --dry-run --data-dir .fmnist must end with its table and exit 0;
#   2. the same with the engine section made to fail (--fail engine) must give that section a
#      FAILED row, run the next section and still end with its table (exit 1).
#   bench/gpu_rehearsal.sh [--venv-only]   # WORK=DIR: the venv and the copy there (default: a
#                                          # temp dir); --venv-only: make the venv, nothing else;
#                                          # FROM=VENV: link torch's closure from VENV, no install
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -n "${WORK:-}" ]; then work=$WORK; else
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi  # (a temp dir of its own: removed)
venv=$work/torch-only
torch=${TORCH:-torch==2.14.1}
mkdir -p "$work"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
  rm -rf "$venv"
  if [ -x "${FROM:-}/bin/python" ]; then
    # torch's installed closure linked from the project's venv: no second 5 GB install (a CI
    # disk filled up installing both at once)
    echo "rehearsal: a venv seeing only torch, numpy and their requirements from $FROM in $venv"
    "$FROM/bin/python" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$FROM/bin/python" - "$site" <<'PY'
import importlib.metadata as md
import os
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

seen, todo = set(), ["torch", "numpy"]
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    for line in md.distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
tops = {}
for name in seen:
    dist = md.distribution(name)
    for f in dist.files or []:
        if f.parts[0] not in ("..", "__pycache__"):
            tops[f.parts[0]] = dist.locate_file(f.parts[0])
for top, path in sorted(tops.items()):
    os.symlink(os.path.abspath(path), os.path.join(sys.argv[1], top))
PY
  else
    echo "rehearsal: a venv with $torch and numpy only in $venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$torch" numpy
  fi
fi
[ "${1:-}" = --venv-only ] && exit 0
if (cd / && for m in ray mlflow optuna trainables; do
      "$venv/bin/python" -c "import $m" 2>/dev/null && exit 0; done; exit 1); then
  echo "rehearsal: $venv holds more than torch and numpy; remove it" >&2; exit 1
fi
tree=$work/tree
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf - | tar -xf - -C "$tree"
make -s gpu-data GPU_DATA="$tree/.fmnist"
out=$work/out
check() {  # $1: what; the rest: gpu_check.sh's arguments
  local what=$1; shift
  rm -rf "$out" && mkdir -p "$out"
  local began=$SECONDS code=0
  (cd "$tree" && env -u PYTHONPATH -u TUNEFUSE_DATA OUT="$out" PYTHON="$venv/bin/python" \
     bash bench/gpu_check.sh --dry-run --data-dir .fmnist "$@") > "$out/stdout" 2>&1 || code=$?
  cat "$out/stdout"
  echo "rehearsal: $what: exit $code in $((SECONDS - began)) s"
  grep -q '^gpu check done in' "$out/stdout" || { echo "rehearsal: $what: the table did not end" >&2; exit 1; }
  diff -q <(grep '^| ' "$out/stdout") <(grep '^| ' "$out/gpu_check.log") >/dev/null || \
    { echo "rehearsal: $what: \$OUT/gpu_check.log is not what was printed" >&2; exit 1; }
  return $code
}
check "the dry run" || { echo "rehearsal: the dry run failed" >&2; exit 1; }
grep -q '^| engine: cnn, resumed from a checkpoint | identical |' "$out/stdout" \
  || { echo "rehearsal: no identical resume row" >&2; exit 1; }
if check "a section made to fail" --only device,engine,seed --fail engine; then
  echo "rehearsal: a FAILED section did not make the check exit 1" >&2; exit 1
fi
grep -q '^| engine | FAILED | RuntimeError: failure injected by --fail engine |' "$out/stdout" \
  && grep -q '^| seed protocol: ' "$out/stdout" \
  || { echo "rehearsal: no FAILED row for the engine, or the next section did not run" >&2; exit 1; }
echo "rehearsal: passed"
