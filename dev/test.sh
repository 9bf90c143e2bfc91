#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint and type-check, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
.venv/bin/ruff check geomprobe tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
