#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): one table of the loss, the recipe step in
# fp32/fp16/bf16, torch.compile, DDP and embedding extraction on the device present
# (cuda when there is one, else a tiny CPU form). Arguments go to the script (--help).
# PY: the Python to use (default: the repository's .venv, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/device_check.py "$@"
