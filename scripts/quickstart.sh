#!/usr/bin/env bash
# From a fresh clone: set up, export the bundled 1m model, quantize it to int8 with its accuracy
# report, and generate a short story with each. Outputs go to ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=${MICROMIXER_DATA:-../shared/data/tinystories}
mkdir -p out
mixer-export --size 1m --output out/micromixer-1m.onnx
if [ -f "$DATA/valid.txt" ]; then text=(--text "$DATA/valid.txt"); else text=(); fi
mixer-quantize out/micromixer-1m.onnx --output out/micromixer-1m-int8.onnx --report out/int8-report.json "${text[@]}"
for model in out/micromixer-1m.onnx out/micromixer-1m-int8.onnx; do
  echo "== $model"
  mixer-run "$model" --prompt "Once upon a time" --max-new-tokens 300 --seed 42 --stats
done
