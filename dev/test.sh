#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint and type-check, then run the whole test suite.
# Each step says what it runs, so a failure is easy to place in a CI log.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== 1/4 setup: dev/setup.sh"
bash dev/setup.sh
echo "== 2/4 lint: ruff check geomprobe tests benchmarks; ruff format --check geomprobe tests benchmarks dev"
.venv/bin/ruff check geomprobe tests benchmarks
.venv/bin/ruff format --check geomprobe tests benchmarks dev
echo "== 3/4 types: mypy (pyproject.toml [tool.mypy])"
.venv/bin/mypy
echo "== 4/4 tests: pytest -q $*"
exec .venv/bin/python -m pytest -q "$@"
