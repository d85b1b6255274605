#!/usr/bin/env bash
# The prepared GPU check (see tools/gpu_check.py): on a machine with a CUDA GPU and
# PyTorch, Triton, matplotlib and tqdm already installed. Results go to $OUT, or to
# gpu-results/ without it.
#
#   bash tools/gpu_check.sh [--skip-demos] [--demo-limit SECONDS] [--parallel N]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# Triton compiles for the GPU here; the CPU test suite sets its interpreter instead.
export TRITON_INTERPRET=0
exec python3 tools/gpu_check.py "$@"
