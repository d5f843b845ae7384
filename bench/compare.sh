#!/usr/bin/env bash
# Build wgcnn, install PyTorch into a virtual environment (once), and benchmark both side by side
# on the same networks (the presets of `wgcnn presets`), data, batch sizes, optimizers and threads:
#
#   bench/compare.sh [--models all | NAME ...] [--mode short|epoch|both]
#                    [--dropout keep|remove|both | --no-dropout] [--threads 2]
#                    [--steps 50] [--warmup 5] [--repeats 5] [--rounds R]
#                    [--epochs 2] [--warmup-epochs 1] [--limit-train N]
#                    [--pytorch-data float32|uint8] [--isa native|avx2] [--json FILE]
#
#   short mode (the default): R (3) alternating rounds, ours then PyTorch, each process 5 warm-up
#     steps then 5 x 50 timed steps; medians over all repetitions.
#   epoch mode: R (1) rounds, each process 1 warm-up epoch then 2 timed epochs of the 60000 images
#     (--limit-train N: the first N, for smoke tests); median over the timed epochs.
#   Prints a Markdown table: network | batch | mode | ours img/s | PyTorch img/s | ratio |
#     ours peak MiB | PyTorch peak MiB. `bench/compare.sh --help` lists every option; the top of
#     bench/compare.py says exactly what is measured.
#
# Examples:
#   bench/compare.sh --models relu-maxpool tanh-avgpool --steps 10 --repeats 2 --rounds 1   # smoke
#   bench/compare.sh --mode both --dropout both --json target/compare.json                  # everything
#
# The virtual environment is target/bench-venv, made here (pip install torch numpy safetensors)
# when it does not exist; WGCNN_BENCH_VENV=DIR uses one of yours instead (not installed into).
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    -h|--help) exec python3 bench/compare.py --help ;;
  esac
done
# --isa avx2: a build without matrixmultiply's AVX-512 kernels (our default feature avx512-sgemm;
# WGCNN_CPU_ISA cannot cap its run-time choice), in its own target directory.
isa_avx2=
prev=
for arg in "$@"; do
  case "$arg" in
    --isa=avx2) isa_avx2=1 ;;
    avx2) [ "$prev" = --isa ] && isa_avx2=1 ;;
  esac
  prev="$arg"
done
cargo build --release --quiet
extra=()
if [ -n "$isa_avx2" ]; then
  cargo build --release --quiet --no-default-features --target-dir target/no-avx512
  extra=(--wgcnn target/no-avx512/release/wgcnn)
fi
# Check the arguments (preset names included) before installing or running anything; this needs
# only the standard library and the binary just built.
python3 bench/compare.py --check-args "$@"
venv="${WGCNN_BENCH_VENV:-target/bench-venv}"
if ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  if [ -n "${WGCNN_BENCH_VENV:-}" ]; then
    echo "bench/compare.sh: error: WGCNN_BENCH_VENV=$venv has no $venv/bin/python that imports torch and numpy" >&2
    echo "  (install them into it with $venv/bin/pip install torch numpy safetensors, or unset WGCNN_BENCH_VENV to use target/bench-venv)" >&2
    exit 1
  fi
  echo "bench/compare.sh: installing PyTorch into $venv (once; a few minutes)" >&2
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet torch numpy safetensors; }; then
    echo "bench/compare.sh: error: could not make the virtual environment $venv with torch, numpy and safetensors" >&2
    echo "  (it needs python3 with the venv module and network access to PyPI; or point WGCNN_BENCH_VENV at a venv that has them)" >&2
    exit 1
  fi
fi
exec "$venv/bin/python" bench/compare.py --python "$venv/bin/python" "${extra[@]}" "$@"
