#!/usr/bin/env bash
# Create .venv (once) and install micromixer-edge with its export, hub, serve, structured, test, lmeval and bench extras (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.micromixer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned (torch==2.13.0, CPU build) in the export extra
  .venv/bin/python -m pip install --quiet -e '.[export,hub,serve,structured,test,lmeval,bench]'
  touch "$stamp"
fi
# the web runner's tests (web/: onnxruntime-node at the version package-lock.json pins); npm: Debian's
if ! command -v npm >/dev/null; then
  bash scripts/node-setup.sh >/dev/null
fi
if [ ! -f web/node_modules/.micromixer-installed ] || [ web/package-lock.json -nt web/node_modules/.micromixer-installed ]; then
  (cd web && npm ci --silent --no-audit --no-fund)
  touch web/node_modules/.micromixer-installed
fi
