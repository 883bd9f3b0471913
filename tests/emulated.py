"""Programs of an emulated Raspberry Pi: scripts/arm-setup.sh's sysroot under QEMU user mode, with
a board's /proc/cpuinfo bound over the host's (onnxruntime probes it; the self-test prints it)."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT


def setup(arch: str) -> str:
    """The sysroot of `arch` ("arm64" or "armhf"), set up once and cached (.cache/)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "arm-setup.sh"), arch], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"emulated {arch} setup failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def env(sysroot: str, cpu: str, home) -> dict:
    # PYTHON: the sysroot's interpreter by its full path; a bare "python3" would find the host's
    # x86 one (the sysroot has python3.11 only), and everything would run natively.
    return {"PATH": os.path.join(sysroot, "usr", "bin") + ":/usr/bin:/bin", "QEMU_LD_PREFIX": sysroot,
            "QEMU_CPU": cpu, "HOME": str(home), "PYTHON": os.path.join(sysroot, "usr", "bin", "python3.11")}


def command(cpuinfo: str, cmd: list[str]) -> list[str]:
    """cmd in a mount namespace where /proc/cpuinfo is `cpuinfo`."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', cpuinfo, *cmd]


def run(sysroot: str, cpu: str, cpuinfo: str, cmd: list[str], cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run cmd as the emulated board's CPU `cpu` (QEMU's name), its /proc/cpuinfo `cpuinfo`."""
    return subprocess.run(command(cpuinfo, cmd), cwd=cwd, env=env(sysroot, cpu, cwd), capture_output=True,
                          text=True, timeout=timeout)


def start(sysroot: str, cpu: str, cpuinfo: str, cmd: list[str], cwd) -> subprocess.Popen:
    """As run(), in the background (stdout and stderr piped, text)."""
    return subprocess.Popen(command(cpuinfo, cmd), cwd=cwd, env=env(sysroot, cpu, cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
