#!/usr/bin/env bash
# Install Debian's nodejs and npm for the web runner's tests and mixer-pack --target web (idempotent;
# needs root for apt-get).
set -euo pipefail
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  # an index that fails (a mirror mid-sync, a foreign architecture's) leaves the others usable
  apt-get update -qq >&2 || echo "node-setup: warning: apt-get update reported errors; going on" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
fi
command -v npm
