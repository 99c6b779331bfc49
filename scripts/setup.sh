#!/usr/bin/env bash
# Create .venv (once) and install fedrun with its PyTorch and test extras.
# torch==2.13.0 is installed first: an open torch requirement resolved on its own pulls a
# multi-GB CUDA build, while 2.13.0 (CPU) satisfies fedrun's range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.fedrun-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
  python -m pip install --quiet -e ".[torch,dev]"
  touch "$stamp"
fi
