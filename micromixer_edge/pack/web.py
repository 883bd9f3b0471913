"""mixer-pack --target web: a static folder that runs a model in the browser (onnxruntime-web).

DIR/
  index.html                 the page (prompt, sampling fields, streaming, bytes/s, stop) and window.micromixer
  micromixer.mjs             the runner (web/micromixer.mjs: sampler, text stream, context modes)
  fields.mjs                 its options' names, defaults, bounds and 400 messages (generated here)
  worker.mjs                 generates off the main thread
  run.mjs, package.json      the same runner in Node with onnxruntime-node (`npm install`, then node run.mjs)
  serve.py                   a static server with the COOP/COEP headers that enable threads
  model.onnx                 the model
  ort.wasm.min.mjs, ort-wasm-simd-threaded.mjs, ort-wasm-simd-threaded.wasm.gz
                             onnxruntime-web ORT_WEB_VERSION (the .wasm gzipped: the page inflates it)

onnxruntime-web comes from npm once (`npm pack`, into the cache) and never from another host at
run time.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

import onnx
from onnx import TensorProto, shape_inference

from ..errors import MixerError, OutputError
from ..runtime.context import FOLD_CHUNK, MODES
from ..runtime.engine import GenerateOptions
from ..runtime.model import MixerModel
from ..runtime.sampling import TINY_TEMPERATURE, SamplingParams

ORT_WEB_VERSION = "1.31.1"  # onnxruntime-web and onnxruntime-node (web/package.json pins the same)
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "micromixer.mjs", "worker.mjs", "run.mjs", "serve.py")
MODEL_NAME = "model.onnx"
MAX_FOLDER_BYTES = 16 * 2**20
# integer MatMuls and their activation input: onnxruntime-web has fast kernels for uint8 activations
# only (int8 ones fall to a scalar kernel, ~8x slower, or have none)
INTEGER_MATMULS = ("MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul",
                   "ConvInteger", "QLinearConv")


def cache_dir() -> Path:
    """Where onnxruntime-web's files are kept after the first pack ($MIXER_CACHE_DIR, else the
    XDG cache)."""
    base = os.environ.get("MIXER_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "micromixer-edge"
    return Path(base) / f"onnxruntime-web-{ORT_WEB_VERSION}"


def ort_web_files(cache: Path | None = None) -> Path:
    """The folder holding ORT_FILES: the cache, filled with `npm pack` on first use."""
    cache = cache or cache_dir()
    if _complete(cache):
        return cache
    npm = shutil.which("npm")
    if npm is None:
        raise MixerError(f"--target web needs onnxruntime-web {ORT_WEB_VERSION} once, from npm: install npm "
                         f"(Debian: sudo apt install npm) and run again (it is kept in {cache})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ort-web-", dir=cache.parent) as tmp:
        files = _npm_pack(npm, Path(tmp))
        if _complete(cache):  # (another pack filled it meanwhile)
            return cache
        if cache.exists():  # (an incomplete copy)
            shutil.rmtree(cache)
        os.replace(files, cache)
    return cache


def _complete(cache: Path) -> bool:
    """The cache holds the files, the .wasm whole (its magic number; npm checked the tarball's
    integrity when it fetched it)."""
    if not all((cache / f).is_file() and (cache / f).stat().st_size > 0 for f in ORT_FILES):
        return False
    with open(cache / ORT_FILES[2], "rb") as f:
        return f.read(4) == b"\0asm"


def _npm_pack(npm: str, tmp: Path) -> Path:
    """onnxruntime-web's tarball from npm (its own cache first), unpacked to tmp/files."""
    what = f"onnxruntime-web {ORT_WEB_VERSION}"
    try:
        proc = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--loglevel=error", "--pack-destination",
                               str(tmp)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise MixerError(f"npm took over 10 minutes to fetch {what}; check the network, then run again") from None
    tgz = tmp / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    if proc.returncode != 0 or not tgz.is_file():
        errors = [line.removeprefix("npm error ") for line in proc.stderr.splitlines() if line.startswith("npm error")]
        last = "; ".join(errors[:2]) or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MixerError(f"npm could not fetch {what} ({last[:200]}); check the network or npm's registry, then run again")
    files = tmp / "files"
    files.mkdir()
    try:
        with tarfile.open(tgz) as tar:
            for name in ORT_FILES:
                (files / name).write_bytes(tar.extractfile(f"package/dist/{name}").read())
    except (KeyError, tarfile.TarError) as e:
        raise MixerError(f"npm's {what} lacks what the page needs ({e}); this version of micromixer-edge expects "
                         f"its dist/ files") from None
    return files


def int8_activations(model: onnx.ModelProto) -> list[str]:
    """The integer MatMuls whose activation input is int8 (onnxruntime-web's slow path)."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name or n.op_type for n in g.node  # (a type shape inference could not tell: counted as slow)
            if n.op_type in INTEGER_MATMULS and types.get(n.input[0], TensorProto.INT8) in (TensorProto.INT8, 0)]


# --- the runner's options: their one home is Python's (SamplingParams, GenerateOptions, the server's fields)
def _flag_free(text: str) -> str:
    """A server message without its flag hint ('... to 4096 (--max-tokens-limit)'): a page has no flags."""
    return re.sub(r" \(--[a-z-]+\)$", "", text)


def option_spec() -> tuple[dict, dict]:
    """(SPEC, DEFAULTS) of fields.mjs: each option's kind, bounds and what its 400 says it must be
    (the server's words for the fields it has: serve/fields.py), and its default."""
    from ..serve.fields import FIELDS
    from ..serve.settings import MAX_STOP_STRINGS, Settings
    from ..runtime.sampling import LOGIT_BIAS
    settings = Settings(model="")  # (the defaults: what a server started without flags says)
    served = {(f.option or f.name): f for f in FIELDS if f.only != "chat"}
    spec = {"prompt": {"kind": "string", "what": "a string"}}
    limit = settings.max_tokens_limit
    spec["max_tokens"] = {"kind": "integer", "low": 0, "high": limit, "above": False,
                          "what": _flag_free(served["max_new_tokens"].what(settings))}
    for f in dataclasses.fields(SamplingParams):
        bound = f.metadata.get("bound")
        if bound is None:
            continue
        high = bound.served if bound.served is not None else bound.high
        what = served[f.name].what(settings) if f.name in served else bound.text(served=True)
        spec[f.name] = {"kind": "integer" if bound.integer else "number", "low": bound.low, "high": high,
                        "above": bound.above, "what": what}
    spec["logit_bias"] = {"kind": "logit_bias", "low": LOGIT_BIAS.low, "high": LOGIT_BIAS.high,
                          "what": served["logit_bias"].what(settings)}
    spec["seed"] = {"kind": "seed", "what": served["seed"].what(settings)}
    spec["stop"] = {"kind": "stop", "most": MAX_STOP_STRINGS, "what": served["stop"].what(settings)}
    spec["context"] = {"kind": "choice", "choices": list(MODES), "what": served["context"].what(settings)}
    spec["ignore_eos"] = {"kind": "boolean", "what": served["ignore_eos"].what(settings)}
    p, g = SamplingParams(), GenerateOptions()
    defaults = {"prompt": "", "max_tokens": g.max_new_tokens, "logit_bias": {}, "seed": None, "stop": [],
                "context": g.context, "ignore_eos": p.ignore_eos}
    defaults.update({name: getattr(p, name) for name in spec if name not in defaults})
    return spec, defaults


# Each context mode's boundary and keep as floor(W * mul / div) + add (null: never): runtime/context.py's
# numbers, tested equal to MODES for many W
MODE_FORMULAS = {"halve": {"boundary": [1, 1, 0], "keep": [1, 2, 0]},
                 "window": {"boundary": [1, 1, 0], "keep": [1, 1, -1]},
                 "unbounded": {"boundary": None, "keep": [0, 1, 0]}}


def fields_module() -> str:
    """fields.mjs's text: generated from the Python definitions (the committed copy is tested equal)."""
    spec, defaults = option_spec()
    consts = {"SPEC": spec, "DEFAULTS": defaults, "CONTEXT_MODES": MODE_FORMULAS, "FOLD_CHUNK": FOLD_CHUNK,
              "MIN_DRAW": -1e308, "TINY_TEMPERATURE": TINY_TEMPERATURE}
    lines = ["// Generated by micromixer_edge/pack/web.py (fields_module) from the Python definitions: do not edit.",
             "// python -m micromixer_edge.pack.web writes it again; tests/test_web.py holds it equal."]
    lines += [f"export const {k} = {json.dumps(v, indent=1 if isinstance(v, dict) else None)};" for k, v in consts.items()]
    return "\n".join(lines) + "\n"


def _source(name: str) -> bytes:
    return (resources.files("micromixer_edge.pack") / "web" / name).read_bytes()


def make_web(model_path: str | os.PathLike, output: str | os.PathLike, cache: Path | None = None) -> Path:
    """Write the static folder `output` (atomically: a temporary folder renamed at the end)."""
    model = MixerModel(model_path)  # refuses anything that is not a MicroMixer export
    slow = int8_activations(onnx.load(str(model_path)))
    if slow:
        raise MixerError(f"{model_path} has int8 activations into an integer MatMul ({slow[0]}, {len(slow)} in all): "
                         "onnxruntime-web runs those ~8x slower; pack the default int8 (mixer-quantize) or the float model")
    out = Path(output)
    if out.name.endswith((".tar.gz", ".tgz", ".zip")):
        raise OutputError(f"--target web writes a folder (a static site), not {out.name}; give a directory name")
    if out.exists():
        raise OutputError(f"{out} exists; remove it or choose another --output")
    if not out.parent.resolve().is_dir():
        raise OutputError(f"output directory {out.parent} does not exist")
    ort_dir = ort_web_files(cache)
    with tempfile.TemporaryDirectory(prefix=".mixer-pack-", dir=out.parent) as tmp:
        root = Path(tmp) / out.name
        root.mkdir()
        for name in PAGE_FILES:
            (root / name).write_bytes(_source(name))
        (root / "fields.mjs").write_text(fields_module())
        (root / "package.json").write_text(json.dumps({
            "name": "micromixer-web", "private": True, "type": "module",
            "description": f"MicroMixer {model.meta['size']} ({model.meta['quantization']}): node run.mjs model.onnx -p ...",
            "dependencies": {"onnxruntime-node": ORT_WEB_VERSION}}, indent=2) + "\n")
        (root / ".npmrc").write_text("onnxruntime-node-install=skip\n")  # (CPU only: no CUDA download)
        shutil.copy2(model_path, root / MODEL_NAME)
        for name in ORT_FILES[:2]:
            shutil.copy2(ort_dir / name, root / name)
        with open(ort_dir / ORT_FILES[2], "rb") as src, gzip.open(root / (ORT_FILES[2] + ".gz"), "wb", 9) as dst:
            shutil.copyfileobj(src, dst)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        if size > MAX_FOLDER_BYTES:
            raise OutputError(f"the folder would be {size / 2**20:.1f} MB, over {MAX_FOLDER_BYTES // 2**20} MB")
        os.replace(root, out)
    return out


if __name__ == "__main__":  # regenerate the committed fields.mjs
    (Path(__file__).parent / "web" / "fields.mjs").write_text(fields_module())
