#!/bin/sh
# Generate text: ./run.sh -p "Once upon a time" [mixer-run options]; ./run.sh --help for all.
cd "$(dirname "$0")"
exec .venv/bin/mixer-run "@MODEL@" --threads "${THREADS:-1}" "$@"
