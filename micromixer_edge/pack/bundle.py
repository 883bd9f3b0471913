"""mixer-pack: everything a Raspberry Pi (64-bit OS) needs to run a model, offline once copied.

BUNDLE/
  MODEL.onnx            the model
  wheels/               the runtime as a wheel (+ the aarch64 wheels of its dependencies)
  requirements.txt      dependency versions pinned for aarch64 (never onnxruntime 1.21.0)
  install.sh            makes .venv, installs from wheels/ (PyPI if a wheel is missing), self-tests
  run.sh                mixer-run on the bundled model
  README.md             for the board
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

from ..errors import OutputError
from ..runtime.model import MixerModel

PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
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


def _serve_requirements() -> list[str]:
    """The `serve` extra (pyproject.toml, as installed): the one list of mixer-serve's dependencies."""
    reqs = metadata.requires("micromixer-edge") or []
    return [r.split(";")[0].strip() for r in reqs if 'extra == "serve"' in r]


def _wheels(dest: Path, with_deps: bool, serve: bool = False) -> list[str]:
    """Build our wheel; download aarch64 wheels of the dependencies. Returns pinned requirements."""
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(project_root()))
    deps = RUNTIME_DEPS + (tuple(_serve_requirements()) if serve else ())
    if not with_deps:
        return [f"{d}{'!=' + BAD_ORT if d == 'onnxruntime' else ''}" for d in deps]
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


def _write_scripts(root: Path, model_name: str, pins: list[str], meta: dict, serve: bool = False) -> None:
    templates = resources.files("micromixer_edge.pack") / "templates"
    (root / "requirements.txt").write_text(
        "# aarch64 (Raspberry Pi OS 64-bit), Python 3.11; onnxruntime 1.21.0 crashes on the Pi\n"
        + "\n".join(pins) + "\n")
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
                serve: bool = False) -> Path:
    """Write the bundle as a directory, or as a .tar.gz when `output` ends so; atomically."""
    model = MixerModel(model_path)  # refuses anything that is not a MicroMixer export
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
        pins = _wheels(root / "wheels", with_deps, serve)
        _write_scripts(root, Path(model_path).name, pins, model.meta, serve)
        if tarball:
            with tarfile.open(Path(tmp) / "bundle.tar.gz", "w:gz") as tar:
                tar.add(root, arcname=name)
            os.replace(Path(tmp) / "bundle.tar.gz", out)
        else:
            os.replace(root, out)
    return out
