#!/usr/bin/env bash
# Set up (idempotently, with a cache) an emulated ARM Python 3.11 to test the runtime as it runs on
# a Raspberry Pi: QEMU user mode and Debian's python3.11 of that architecture unpacked into a
# sysroot. Only the package registries are used. Prints the sysroot path on success.
#   scripts/arm-setup.sh [arm64|armhf]
#   arm64 (default): 64-bit Pi OS; PyPI's aarch64 wheels come with the mixer-pack bundle the tests install.
#   armhf: 32-bit Pi OS (armv7), where PyPI has no onnxruntime wheel: Debian's python3-numpy and
#          python3-click too, as `sudo apt install` gives them on the board.
#   ARM_CACHE (default: .cache/ARCH) holds everything; delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-arm64}
case "$ARCH" in
  arm64) QEMU=aarch64; TRIPLET=aarch64-linux-gnu; EXTRA=""
         CACHE=${ARM_CACHE:-$PWD/.cache/arm} ;;
  armhf) QEMU=arm; TRIPLET=arm-linux-gnueabihf; EXTRA="python3-numpy:armhf"
         CACHE=${ARM_CACHE:-$PWD/.cache/armhf} ;;
  *) echo "arm-setup: unknown architecture $ARCH (arm64 or armhf)" >&2; exit 2 ;;
esac
SYSROOT=$CACHE/sysroot
mkdir -p "$CACHE/debs" "$SYSROOT"
log() { echo "arm-setup ($ARCH): $*" >&2; }

if ! command -v "qemu-$QEMU-static" >/dev/null; then
  log "installing qemu-user-static"
  apt-get update -qq >&2 || log "warning: apt-get update reported errors; going on with the indexes it has"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2
fi

# arch-independent: the wheels that ensurepip (python3.11 -m venv) installs from; click (pure Python)
ALL_PKGS="python3-pip-whl python3-setuptools-whl"
[ "$ARCH" = armhf ] && ALL_PKGS="$ALL_PKGS python3-click"
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
    dpkg --add-architecture "$ARCH"
  fi
  if [ -z "$(ls "$CACHE/debs")" ]; then
    log "downloading $ARCH packages"
    # an index that fails (a mirror mid-sync) leaves the others usable: apt resolves what it can
    apt-get update -qq >&2 || log "warning: apt-get update reported errors; going on with the indexes it has"
    # python3.11 and python3.11-venv (and numpy, click) with their library dependencies, resolved by apt
    deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
             --no-replaces --no-enhances --no-pre-depends "python3.11:$ARCH" "python3.11-venv:$ARCH" \
             "libstdc++6:$ARCH" $EXTRA | grep -E "^[a-z0-9].*:$ARCH\$" | grep -vE '^(dpkg|tar|install-info|perl)' \
             | sort -u)
    (cd "$CACHE/debs" && apt-get download $deps $ALL_PKGS >&2)
  fi
  log "unpacking into $SYSROOT"
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
fi
# BLAS and LAPACK are found through update-alternatives links, which dpkg -x does not make: the
# reference libraries (apt's default choice), by relative links (an absolute one would resolve on
# the host, not in the sysroot)
lib=$SYSROOT/usr/lib/$TRIPLET
for pair in blas/libblas.so.3 lapack/liblapack.so.3; do
  [ -e "$lib/$pair" ] && ln -sfn "$pair" "$lib/$(basename "$pair")"
done

if [ "$ARCH" = arm64 ]; then
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
fi

if [ "$ARCH" = armhf ]; then
  # a Raspberry Pi 2's /proc/cpuinfo (Cortex-A7) on 32-bit Pi OS, and a Cortex-A15 board's (no Pi has one)
  cat > "$CACHE/cpuinfo.a7" <<'CPU'
processor	: 0
model name	: ARMv7 Processor rev 5 (v7l)
BogoMIPS	: 38.40
Features	: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm
CPU implementer	: 0x41
CPU architecture: 7
CPU variant	: 0x0
CPU part	: 0xc07
CPU revision	: 5

Hardware	: BCM2835
Model		: Raspberry Pi 2 Model B Rev 1.1
CPU
  sed -e 's/0xc07/0xc0f/' -e 's/rev 5/rev 3/' -e '/^Hardware/d' -e '/^Model/d' "$CACHE/cpuinfo.a7" > "$CACHE/cpuinfo.a15"
fi

# Let ARM programs run transparently (a venv's python, its console scripts): register QEMU with
# binfmt_misc; with QEMU_LD_PREFIX=SYSROOT they find the ARM libraries.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU" ]; then
  log "registering qemu-$QEMU with binfmt_misc"
  sed "s|:/usr/libexec/qemu-binfmt/$QEMU-binfmt-P:.*\$|:/usr/bin/qemu-$QEMU-static:F|" \
    "/usr/lib/binfmt.d/qemu-$QEMU.conf" > /proc/sys/fs/binfmt_misc/register
fi
echo "$SYSROOT"
