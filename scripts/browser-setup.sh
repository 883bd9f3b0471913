#!/usr/bin/env bash
# Install Debian's chromium for the playground test (idempotent; needs root for apt-get).
set -euo pipefail
if ! command -v chromium >/dev/null; then
  # an index that fails (a mirror mid-sync, a foreign architecture's) leaves the others usable
  apt-get update -qq >&2 || echo "browser-setup: warning: apt-get update reported errors; going on" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
command -v chromium
