#!/usr/bin/env bash
# Install Debian's nginx for the fleet test (tests/test_fleet.py; idempotent; needs root for apt-get).
# Only the binary is used: the test writes its own configuration and runs nginx as a child process.
set -euo pipefail
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  # an index that fails (a mirror mid-sync, a foreign architecture's) leaves the others usable
  apt-get update -qq >&2 || echo "nginx-setup: warning: apt-get update reported errors; going on" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >&2 \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >&2
  # the package starts its own nginx on port 80 where a service manager runs: the test needs none
  (command -v systemctl >/dev/null && systemctl stop nginx 2>/dev/null) || true
  [ -f /run/nginx.pid ] && kill "$(cat /run/nginx.pid)" 2>/dev/null || true
fi
command -v nginx || echo /usr/sbin/nginx
