#!/usr/bin/env bash
# Training-step benchmark against PyTorch (issue 6): builds the release binary, installs PyTorch
# from PyPI into a throwaway virtual environment (or reuses $BENCH_VENV), then runs
# bench/train_vs_pytorch.py, which interleaves the two frameworks and prints the table; its last
# line is `worst step-time ratio vs PyTorch: X.XX`. Arguments go to the Python script, e.g.
#   bash bench/train_vs_pytorch.sh --nets small-cnn resnet-20 --threads 1 --rounds 3
# The PyPI wheel of torch pulls in CUDA libraries (~3 GB download); set BENCH_VENV to a folder
# to keep the environment between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
venv="${BENCH_VENV:-}"
if [ -z "$venv" ]; then
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    venv="$scratch/venv"
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy
fi
exec "$venv/bin/python" bench/train_vs_pytorch.py --binary target/release/pipeline "$@"
