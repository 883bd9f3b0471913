"""Emulated Raspberry Pi (aarch64 under QEMU user mode): the runtime, installed from a mixer-pack
bundle into Debian's arm64 Python 3.11 with PyPI's aarch64 wheels (torch absent), generates the
same greedy ids as this x86 machine, on the float and the int8 1m models, for the Pi 4 and Pi 5 CPUs.
"""
import json
import os
import subprocess

import pytest

from conftest import ROOT
from micromixer_edge.pack import make_bundle
from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.runtime.api import load_model
from micromixer_edge.runtime.selftest import greedy_ids

pytestmark = pytest.mark.arm
CPUS = {"cortex-a72": "cpuinfo.a72", "cortex-a76": "cpuinfo.a76"}  # Pi 4, Pi 5
PROMPT, TOKENS = "Once upon a time", 150


@pytest.fixture(scope="module")
def sysroot():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "arm-setup.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"emulated aarch64 setup failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _emulated(sysroot, cpu, cmd, cwd):
    """Run cmd as aarch64 with a Raspberry Pi's /proc/cpuinfo (onnxruntime probes it)."""
    cpuinfo = os.path.join(os.path.dirname(sysroot), CPUS[cpu])
    env = {"PATH": os.path.join(sysroot, "usr", "bin") + ":/usr/bin:/bin", "QEMU_LD_PREFIX": sysroot, "QEMU_CPU": cpu, "HOME": str(cwd)}
    shell = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", shell, cpuinfo, *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bundle(export_file, sysroot, tmp_path_factory):
    """The float and int8 models, packed and installed on the emulated board with install.sh."""
    d = tmp_path_factory.mktemp("arm")
    src = export_file("brief_1m_model")
    quantize_file(src, d / "int8.onnx", QuantOptions(mode="dynamic"))
    out = make_bundle(src, d / "bundle")
    os.replace(d / "int8.onnx", out / "int8.onnx")
    proc = _emulated(sysroot, "cortex-a72", ["sh", "./install.sh"], out)  # python3: the arm64 one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selftest PASS" in proc.stdout and "Raspberry Pi 4" in proc.stdout
    return {"dir": out, "float": out / src.name, "int8": out / "int8.onnx"}


SCRIPT = """
import json, sys
try:
    import torch
    sys.exit("torch must not be installed here")
except ImportError:
    pass
from micromixer_edge.runtime.api import load_model
from micromixer_edge.runtime.selftest import greedy_ids
print(json.dumps(greedy_ids(load_model(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
"""


@pytest.mark.parametrize("cpu", list(CPUS))
@pytest.mark.parametrize("kind", ["float", "int8"])
def test_emulated_pi_generates_the_same_ids(sysroot, bundle, cpu, kind):
    model = bundle[kind]
    want = greedy_ids(load_model(model), PROMPT, TOKENS)
    proc = _emulated(sysroot, cpu, [".venv/bin/python", "-c", SCRIPT, str(model), PROMPT, str(TOKENS)],
                     bundle["dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == want
