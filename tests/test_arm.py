"""Emulated Raspberry Pi (aarch64 under QEMU user mode): the runtime, installed from a mixer-pack
bundle into Debian's arm64 Python 3.11 with PyPI's aarch64 wheels (torch absent), generates the
same greedy ids as this x86 machine on 8 prompts, for the Pi 4 and Pi 5 CPUs: the float export of
the bundled 1m weights, its default int8 and its Pi 4 scheme (weight-only).
"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from micromixer_edge.pack import make_bundle
from micromixer_edge.runtime.api import load_model
from micromixer_edge.runtime.selftest import greedy_ids

pytestmark = pytest.mark.arm
CPUS = {"cortex-a72": "cpuinfo.a72", "cortex-a76": "cpuinfo.a76"}  # Pi 4, Pi 5
PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
           "Tom had a big red", "The sun was", "Mom said,", "In the park there was a tall tree"]
TOKENS = 150
KINDS = ("float", "int8", "weight-only")


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
def bundle(bundled, sysroot, tmp_path_factory):
    """The float and quantized models, packed and installed on the emulated board with install.sh."""
    d = tmp_path_factory.mktemp("arm")
    out = make_bundle(bundled["float"], d / "bundle")
    for kind in KINDS[1:]:
        shutil.copy2(bundled[kind], out / f"{kind}.onnx")
    proc = _emulated(sysroot, "cortex-a72", ["sh", "./install.sh"], out)  # python3: the arm64 one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selftest PASS" in proc.stdout and "Raspberry Pi 4" in proc.stdout
    return {"dir": out, "float": out / bundled["float"].name, **{k: out / f"{k}.onnx" for k in KINDS[1:]}}


SCRIPT = """
import json, sys
try:
    import torch
    sys.exit("torch must not be installed here")
except ImportError:
    pass
from micromixer_edge.runtime.api import load_model
from micromixer_edge.runtime.selftest import greedy_ids, slow_path_note
prompts, tokens = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    model = load_model(path)
    out[path] = {"ids": [greedy_ids(model, p, tokens) for p in prompts], "note": slow_path_note(model)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def emulated_ids(sysroot, bundle):
    """cpu -> model path -> {"ids": greedy ids per prompt, "note": the runtime's slow-path note}."""
    out = {}
    for cpu in CPUS:
        paths = [str(bundle[k]) for k in KINDS]
        proc = _emulated(sysroot, cpu, [".venv/bin/python", "-c", SCRIPT, json.dumps(PROMPTS), str(TOKENS),
                                        *paths], bundle["dir"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[cpu] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize("cpu", list(CPUS))
@pytest.mark.parametrize("kind", KINDS)
def test_emulated_pi_generates_the_same_ids(bundle, emulated_ids, cpu, kind):
    model = load_model(bundle[kind])
    want = [greedy_ids(model, p, TOKENS) for p in PROMPTS]
    got = emulated_ids[cpu][str(bundle[kind])]
    same = [g == w for g, w in zip(got["ids"], want)]
    print(f"{cpu} {kind}: {sum(same)}/{len(same)} prompts identical; note: {got['note']}")
    assert all(same)


def test_pi4_is_told_about_the_slow_path(bundle, emulated_ids):
    """On the Cortex-A72 (no asimddp) the default int8 runs on onnxruntime's fallback: the runtime
    says so; on the Cortex-A76 it does not, nor for the Pi 4 scheme."""
    assert "--target pi4" in emulated_ids["cortex-a72"][str(bundle["int8"])]["note"]
    assert emulated_ids["cortex-a76"][str(bundle["int8"])]["note"] is None
    assert emulated_ids["cortex-a72"][str(bundle["weight-only"])]["note"] is None
