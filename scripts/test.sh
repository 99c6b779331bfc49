#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: python -m pytest (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# tests that need the real MNIST files find them here when the shared folder sits beside the repo
if [ -z "${FEDRUN_MNIST_DIR:-}" ] && [ -d ../shared/data/mnist ]; then
  export FEDRUN_MNIST_DIR="$(cd ../shared/data/mnist && pwd)"
fi
exec python -m pytest "$@"
