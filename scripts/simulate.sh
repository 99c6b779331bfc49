#!/usr/bin/env bash
# Set up (if needed) and run a whole local federation: fx simulate on the offline torch/digits
# template (1 aggregator + 2 collaborator processes, mutual TLS on localhost). Extra arguments
# go to `fx simulate` (see `fx simulate --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec fx simulate "$@"
