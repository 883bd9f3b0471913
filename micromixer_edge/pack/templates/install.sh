#!/bin/sh
# Install the MicroMixer runtime into ./.venv from the bundled wheels, then self-test the model.
#   ./install.sh --service   also installs and starts the mixer-serve systemd unit (bundles made
#                            with mixer-pack --serve; needs sudo)
# Needs python3 (3.11 on Raspberry Pi OS bookworm) with venv: sudo apt install python3-venv
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ "$(uname -m)" = "armv7l" ]; then
  echo "32-bit Raspberry Pi OS has no onnxruntime wheel; use the 64-bit OS" >&2
  exit 1
fi
# --copies: the venv's python is a copy of the interpreter, not a symlink to its absolute path, so
# it survives an upgrade of the system python, and an emulated install (QEMU) keeps running the
# board's aarch64 interpreter instead of whatever sits at that path on the host.
[ -x .venv/bin/python ] || "$PYTHON" -m venv --copies .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check --quiet "$@"; }
# the runtime needs numpy, onnxruntime and click only: offline from wheels/, else from PyPI
pip install --no-index --find-links wheels -r requirements.txt || pip install -r requirements.txt
pip install --no-index --no-deps wheels/micromixer_edge-*.whl
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
