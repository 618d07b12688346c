#!/usr/bin/env bash
# The GPU check in one command (steps: benchmarks/gpu_check.py); refuses without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
