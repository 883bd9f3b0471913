"""mixer-pack: everything a Raspberry Pi needs to run a model, offline once copied.

BUNDLE/
  MODEL.onnx            the model
  wheels/               the runtime as a wheel (+ the aarch64 wheels of its dependencies)
  requirements.txt      dependency versions pinned for aarch64 (never onnxruntime 1.21.0)
  install.sh            makes .venv, installs from wheels/ (PyPI if a wheel is missing), self-tests;
                        on 32-bit Pi OS (armv7): a venv over apt's numpy and click, no onnxruntime
  run.sh                mixer-run on the bundled model
  README.md             for the board

A bundle for --target pi32 (32-bit Pi OS) carries no dependency wheels: the board's own numpy and
click (apt) and the numpy backend run the model.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata, resources
from pathlib import Path

from ..errors import MixerError, OutputError
from ..format import NUMPY_TARGETS
from ..runtime.model import MixerModel

# glibc 2.31 at least (Pi OS bullseye; bookworm has 2.36): llguidance's aarch64 wheel (the serve
# extra's structured output) carries manylinux_2_31 only, onnxruntime's manylinux_2_28 only
PLATFORMS = ("manylinux_2_31_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
PYTHON_VERSION = "3.11"  # Raspberry Pi OS bookworm
BAD_ORT = "1.21.0"       # crashes with "Illegal instruction" on the Pi's aarch64
RUNTIME_DEPS = ("numpy", "onnxruntime", "click")


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise OutputError(f"pip {args[0]} failed: {last[:200]}")


def project_root() -> Path:
    root = Path(str(resources.files("micromixer_edge"))).parent
    if not (root / "pyproject.toml").is_file():
        raise OutputError("mixer-pack builds the runtime wheel from the micromixer-edge source tree; "
                          "install it from a clone (pip install -e .)")
    return root


def _unpinned(deps) -> list[str]:
    """Requirements by name alone (PyPI picks the versions on the board), never the bad onnxruntime."""
    return [f"{d}{'!=' + BAD_ORT if d == 'onnxruntime' else ''}" for d in deps]


def _runtime_wheel(dest: Path) -> None:
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(project_root()))


def _serve_requirements() -> list[str]:
    """The `serve` extra (pyproject.toml, as installed): the one list of mixer-serve's dependencies."""
    reqs = metadata.requires("micromixer-edge") or []
    return [r.split(";")[0].strip() for r in reqs if 'extra == "serve"' in r]


def _wheels(dest: Path, with_deps: bool, serve: bool = False) -> list[str]:
    """Build our wheel; download aarch64 wheels of the dependencies. Returns pinned requirements."""
    _runtime_wheel(dest)
    deps = RUNTIME_DEPS + (tuple(_serve_requirements()) if serve else ())
    if not with_deps:
        return _unpinned(deps)
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    _pip("download", "--quiet", "--dest", str(dest), "--only-binary=:all:", "--python-version",
         PYTHON_VERSION, *plats, "--platform", "any", *deps, f"onnxruntime!={BAD_ORT}")
    pins = []
    for whl in sorted(dest.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if name != "micromixer_edge":
            pins.append(f"{name.replace('_', '-')}=={version}")
    if f"onnxruntime=={BAD_ORT}" in pins:
        raise OutputError(f"refusing onnxruntime {BAD_ORT}: it crashes on Raspberry Pi aarch64")
    return pins


REQUIREMENTS_HEADER = {
    "64-bit": "# aarch64 (Raspberry Pi OS 64-bit), Python 3.11; onnxruntime 1.21.0 crashes on the Pi\n",
    "32-bit": "# armv7 (Raspberry Pi OS 32-bit): install.sh uses apt's python3-numpy and python3-click\n"
              "# (sudo apt install python3-numpy python3-click python3-venv) and not this list; PyPI has no\n"
              "# onnxruntime wheel for armv7, so the numpy backend runs the model. On a 64-bit OS, install.sh\n"
              "# fetches these from PyPI.\n"}


def _write_scripts(root: Path, model_name: str, pins: list[str], meta: dict, serve: bool = False,
                   os_bits: str = "64-bit") -> None:
    templates = resources.files("micromixer_edge.pack") / "templates"
    (root / "requirements.txt").write_text(REQUIREMENTS_HEADER[os_bits] + "".join(p + "\n" for p in pins))
    for name in ("install.sh", "run.sh", "README.md") + (("micromixer-serve.service",) if serve else ()):
        text = (templates / name).read_text().replace("@MODEL@", model_name)
        text = text.replace("@SIZE@", str(meta["size"])).replace("@QUANT@", str(meta["quantization"]))
        (root / name).write_text(text)
        if name.endswith(".sh"):
            (root / name).chmod(0o755)


def model_scheme(model_path: str | os.PathLike) -> str:
    """The quantization scheme of a model file (refuses anything that is not a MicroMixer export)."""
    return MixerModel(model_path).meta["quantization"]


def make_bundle(model_path: str | os.PathLike, output: str | os.PathLike, with_deps: bool = True,
                serve: bool = False, target: str = "generic") -> Path:
    """Write the bundle as a directory, or as a .tar.gz when `output` ends so; atomically. A
    target of NUMPY_TARGETS (32-bit Pi OS) gets the runtime's wheel alone."""
    model = MixerModel(model_path)  # refuses anything that is not a MicroMixer export
    numpy_only = target in NUMPY_TARGETS
    if numpy_only and serve:
        raise MixerError(f"--serve is not offered for --target {target}: mixer-serve's dependencies "
                         "(uvloop, httptools) have no 32-bit wheels on PyPI; use a 64-bit OS to serve")
    out = Path(output)
    if out.exists():
        raise OutputError(f"{out} exists; remove it or choose another --output")
    if not out.parent.resolve().is_dir():
        raise OutputError(f"output directory {out.parent} does not exist")
    tarball = out.name.endswith((".tar.gz", ".tgz"))
    name = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    with tempfile.TemporaryDirectory(prefix=".mixer-pack-", dir=out.parent) as tmp:
        root = Path(tmp) / name
        (root / "wheels").mkdir(parents=True)
        shutil.copy2(model_path, root / Path(model_path).name)
        # (a pi32 bundle on a 64-bit OS: install.sh fetches these from PyPI; on 32-bit it uses apt's)
        pins = _unpinned(RUNTIME_DEPS) if numpy_only else _wheels(root / "wheels", with_deps, serve)
        if numpy_only:
            _runtime_wheel(root / "wheels")
        _write_scripts(root, Path(model_path).name, pins, model.meta, serve, "32-bit" if numpy_only else "64-bit")
        if tarball:
            with tarfile.open(Path(tmp) / "bundle.tar.gz", "w:gz") as tar:
                tar.add(root, arcname=name)
            os.replace(Path(tmp) / "bundle.tar.gz", out)
        else:
            os.replace(root, out)
    return out
