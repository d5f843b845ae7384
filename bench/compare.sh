#!/usr/bin/env bash
# Build wgcnn, install PyTorch into a virtual environment (once), and benchmark both side by side:
#   bench/compare.sh [--models default relu-maxpool] [--steps 50] [--repeats 5]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${WGCNN_BENCH_VENV:-target/bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy safetensors
fi
cargo build --release --quiet
exec "$venv/bin/python" bench/compare.py --python "$venv/bin/python" "$@"
