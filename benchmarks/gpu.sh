#!/usr/bin/env bash
# The GPU run (issue 17): fp16 / bf16 / fp32, exact vs Nystrom at the paper's windows for SwinIR-M,
# Uformer-B and RVRT at model level, and end-to-end CLI fps on a 1080p clip; JSON to gpu.json
# (or $1). Bounded to 8 minutes. Details: benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec timeout 480 "$PY" benchmarks/gpu.py --out "${1:-gpu.json}"
