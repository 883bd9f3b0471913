#!/usr/bin/env bash
# Set up if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the clients the tests drive (test and lmeval extras): missing, their tests would skip unseen
.venv/bin/python -c "import openai, httpx, websocket, langchain_openai, llm, lm_eval" \
  || { echo "error: the test or lmeval extra is missing: run bash scripts/setup.sh" >&2; exit 1; }
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
