"""Emulated Raspberry Pi (aarch64 under QEMU user mode): the runtime, installed from a mixer-pack
bundle into Debian's arm64 Python 3.11 with PyPI's aarch64 wheels (torch absent), generates the
same greedy ids as this x86 machine on 8 prompts, for the Pi 4 and Pi 5 CPUs: the float export of
the bundled 1m weights and its portable int8 (float arithmetic). The default int8 and int8-block,
which round their activations after each CPU's own kernel, are measured and printed, and the Pi 4
is told that int8-block runs on a slow fallback there.
"""
import json
import os
import shutil

import pytest

import emulated
from micromixer_edge.pack import make_bundle
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.selftest import greedy_ids

pytestmark = pytest.mark.arm
CPUS = {"cortex-a72": "cpuinfo.a72", "cortex-a76": "cpuinfo.a76"}  # Pi 4, Pi 5
PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
           "Tom had a big red", "The sun was", "Mom said,", "In the park there was a tall tree"]
TOKENS = 150
KINDS = ("float", "portable", "int8", "int8-block")


@pytest.fixture(scope="module")
def sysroot():
    return emulated.setup("arm64")


def _emulated(sysroot, cpu, cmd, cwd):
    """Run cmd as aarch64 with a Raspberry Pi's /proc/cpuinfo (onnxruntime probes it)."""
    return emulated.run(sysroot, cpu, os.path.join(os.path.dirname(sysroot), CPUS[cpu]), cmd, cwd)


@pytest.fixture(scope="module")
def bundle(bundled, sysroot, tmp_path_factory):
    """The float and quantized models, packed and installed on the emulated board with install.sh."""
    d = tmp_path_factory.mktemp("arm")
    out = make_bundle(bundled["float"], d / "bundle", serve=True)
    for kind in KINDS[1:]:
        shutil.copy2(bundled[kind], out / f"{kind}.onnx")
    proc = _emulated(sysroot, "cortex-a72", ["sh", "./install.sh"], out)  # python3: the arm64 one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selftest PASS" in proc.stdout and "Raspberry Pi 4" in proc.stdout
    return {"dir": out, "float": out / bundled["float"].name, **{k: out / f"{k}.onnx" for k in KINDS[1:]}}


SCRIPT = """
import json, platform, sys
if platform.machine() != "aarch64":
    sys.exit(f"not emulated: this python runs on {platform.machine()}")
try:
    import torch
    sys.exit("torch must not be installed here")
except ImportError:
    pass
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.selftest import greedy_ids, slow_path_note
prompts, tokens = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    model = MixerModel(path)
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


def _agreement(bundle, emulated_ids, cpu, kind) -> list[bool]:
    model = MixerModel(bundle[kind])
    want = [greedy_ids(model, p, TOKENS) for p in PROMPTS]
    same = [g == w for g, w in zip(emulated_ids[cpu][str(bundle[kind])]["ids"], want)]
    print(f"{cpu} {kind}: {sum(same)}/{len(same)} prompts identical over {TOKENS} bytes")
    return same


@pytest.mark.parametrize("cpu", list(CPUS))
@pytest.mark.parametrize("kind", KINDS[:2])
def test_emulated_pi_generates_the_same_ids(bundle, emulated_ids, cpu, kind):
    assert all(_agreement(bundle, emulated_ids, cpu, kind))


@pytest.mark.parametrize("kind", KINDS[2:])
def test_int8_agreement_is_measured(bundle, emulated_ids, kind):
    """Not asserted equal: each CPU's kernels round the activations after their own float
    accumulation order (docs/raspberry-pi.md); the counts go to docs/performance.md."""
    for cpu in CPUS:
        same = _agreement(bundle, emulated_ids, cpu, kind)
        assert len(same) == len(PROMPTS)


def test_pi4_is_told_about_the_slow_path(bundle, emulated_ids):
    """On the Cortex-A72 (no asimddp) int8-block runs on onnxruntime's fallback: the runtime says
    so; on the Cortex-A76 it does not, nor for the default int8."""
    assert "--target pi4" in emulated_ids["cortex-a72"][str(bundle["int8-block"])]["note"]
    assert emulated_ids["cortex-a76"][str(bundle["int8-block"])]["note"] is None
    assert emulated_ids["cortex-a72"][str(bundle["int8"])]["note"] is None
    assert emulated_ids["cortex-a72"][str(bundle["portable"])]["note"] is None


def test_the_server_runs_from_the_bundle_on_the_emulated_pi5(sysroot, bundle, bundled):
    """mixer-serve, installed by the bundle (mixer-pack --serve), answers one completion under
    QEMU (Cortex-A76) with the bytes this machine generates (the portable int8: the same bytes on
    every CPU)."""
    import re
    import signal
    import httpx
    from micromixer_edge.runtime.constraint import Constraint
    from micromixer_edge.runtime.engine import GenerateOptions
    from micromixer_edge.runtime.generate import generate
    cpuinfo = os.path.join(os.path.dirname(sysroot), CPUS["cortex-a76"])
    proc = emulated.start(sysroot, "cortex-a76", cpuinfo, [".venv/bin/mixer-serve", str(bundle["portable"]),
                                                          "--port", "0", "--constraint-mask-ms", "5000"],
                           bundle["dir"])  # (QEMU runs a mask ~50x slower)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, (line, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
        r = httpx.post(url.group(0) + "/v1/completions", timeout=300,
                       json={"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0})
        want = generate(MixerModel(bundle["portable"]), "Once upon a time",
                        GenerateOptions.of(max_new_tokens=60, temperature=0))
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
        # structured output (llguidance's aarch64 wheel, from the bundle): the same bytes as here
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}, "required": ["name"]}
        r = httpx.post(url.group(0) + "/v1/completions", timeout=300, json={
            "prompt": "A pet:", "max_tokens": 60, "temperature": 0, "json_schema": schema})
        want = generate(MixerModel(bundle["portable"]), "A pet:", GenerateOptions.of(
            max_new_tokens=60, temperature=0, constraint=Constraint.json_schema(schema)))
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want and json.loads(want)["name"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
