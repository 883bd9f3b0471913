#!/usr/bin/env bash
# Set up (idempotently, with a cache) an emulated aarch64 Python 3.11 to test the runtime as it runs
# on a Raspberry Pi: QEMU user mode and Debian's arm64 python3.11 unpacked into a sysroot (PyPI's
# aarch64 wheels come with the mixer-pack bundle the tests install). Only the package registries
# are used. Prints the sysroot path on success.
#   ARM_CACHE (default: .cache/arm) holds everything; delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ARM_CACHE:-$PWD/.cache/arm}
SYSROOT=$CACHE/sysroot
mkdir -p "$CACHE/debs" "$SYSROOT"
log() { echo "arm-setup: $*" >&2; }

if ! command -v qemu-aarch64-static >/dev/null; then
  log "installing qemu-user-static"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2
fi

# arch-independent wheels that ensurepip (python3.11 -m venv) installs from
ALL_PKGS="python3-pip-whl python3-setuptools-whl"
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  if [ -z "$(ls "$CACHE/debs")" ]; then
    log "downloading arm64 packages"
    apt-get update -qq >&2
    # python3.11 and python3.11-venv with their library dependencies, resolved by apt
    deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
             --no-replaces --no-enhances --no-pre-depends python3.11:arm64 python3.11-venv:arm64 \
             libstdc++6:arm64 | grep -E '^[a-z0-9].*:arm64$' | grep -vE '^(dpkg|tar|install-info|perl)' | sort -u)
    (cd "$CACHE/debs" && apt-get download $deps $ALL_PKGS >&2)
  fi
  log "unpacking into $SYSROOT"
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
fi

# a Raspberry Pi 4's /proc/cpuinfo: onnxruntime's CPU probe crashes on the host's x86 one under QEMU
cat > "$CACHE/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
CPU
cp "$CACHE/cpuinfo" "$CACHE/cpuinfo.a72"
sed -e 's/0xd08/0xd0b/' -e 's/Features.*/Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp/' \
    -e 's/Raspberry Pi 4 Model B Rev 1.4/Raspberry Pi 5 Model B Rev 1.0/' "$CACHE/cpuinfo" > "$CACHE/cpuinfo.a76"

# Let aarch64 programs run transparently (a venv's python, its console scripts): register QEMU
# with binfmt_misc; with QEMU_LD_PREFIX=SYSROOT they find the arm64 libraries.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  log "registering qemu-aarch64 with binfmt_misc"
  sed 's|:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:.*$|:/usr/bin/qemu-aarch64-static:F|' \
    /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
echo "$SYSROOT"
