#!/bin/sh
# Install the MicroMixer runtime into ./.venv from the bundled wheels, then self-test the model.
#   ./install.sh --service   also installs and starts the mixer-serve systemd unit (bundles made
#                            with mixer-pack --serve; needs sudo)
# Needs python3 (3.11 on Raspberry Pi OS bookworm) with venv: sudo apt install python3-venv
# On 32-bit Raspberry Pi OS (armv7), where PyPI has no onnxruntime wheel (and no numpy wheel), it
# uses apt's numpy and click instead: sudo apt install python3-numpy python3-click python3-venv
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
pip() { .venv/bin/python -m pip --disable-pip-version-check --quiet "$@"; }
# --copies: the venv's python is a copy of the interpreter, not a symlink to its absolute path, so
# it survives an upgrade of the system python, and an emulated install (QEMU) keeps running the
# board's ARM interpreter instead of whatever sits at that path on the host.
# 32 or 64: the userland's, from its Python (a 32-bit Pi OS on a Pi 4 boots a 64-bit kernel, so
# `uname -m` says aarch64 there)
BITS=$("$PYTHON" -c "import struct; print(struct.calcsize('P') * 8)")
if [ "$BITS" = 32 ]; then
  if [ "${1:-}" = "--service" ]; then
    echo "mixer-serve is not offered on 32-bit Pi OS (its uvloop and httptools have no armv7 wheels); run ./install.sh without --service, or use the 64-bit OS to serve" >&2
    exit 1
  fi
  need="32-bit Raspberry Pi OS: first run: sudo apt install python3-numpy python3-click python3-venv"
  "$PYTHON" -c "import numpy, click" 2>/dev/null || { echo "$need" >&2; exit 1; }
  # the system's numpy and click are seen from the venv; the runtime runs the model with numpy
  [ -x .venv/bin/python ] || "$PYTHON" -m venv --copies --system-site-packages .venv \
    || { rm -rf .venv; echo "$need" >&2; exit 1; }
  pip install --no-index --no-deps wheels/micromixer_edge-*.whl
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv --copies .venv
  # the runtime needs numpy, onnxruntime and click only: offline from wheels/, else from PyPI
  pip install --no-index --find-links wheels -r requirements.txt || pip install -r requirements.txt
  pip install --no-index --no-deps wheels/micromixer_edge-*.whl
fi
.venv/bin/mixer-run "@MODEL@" --selftest
if [ "${1:-}" = "--service" ]; then
  if [ ! -f micromixer-serve.service ]; then
    echo "this bundle has no server; make it with mixer-pack --serve" >&2
    exit 1
  fi
  sed -e "s|@DIR@|$PWD|g" -e "s|@USER@|$(id -un)|g" micromixer-serve.service > /tmp/micromixer-serve.service
  sudo install -m 644 /tmp/micromixer-serve.service /etc/systemd/system/micromixer-serve.service
  sudo systemctl daemon-reload
  sudo systemctl enable --now micromixer-serve.service
  echo "micromixer-serve: enabled; http://$(hostname).local:8080/ (systemctl status micromixer-serve)"
fi
