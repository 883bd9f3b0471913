"""Shared fixtures: where the golden data lives, and exported models cached per test session."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MICROMIXER_SHARED", ROOT.parent / "shared"))
GOLDEN = Path(os.environ.get("MICROMIXER_GOLDEN", SHARED / "golden"))
DATA = Path(os.environ.get("MICROMIXER_DATA", SHARED / "data" / "tinystories"))
SIZES = ("100k", "300k", "500k", "1m")

# Logits reach magnitudes near 100: float32 in another operation order differs by ~1e-4 (golden README).
ATOL = 1e-3


def golden_reference(size: str) -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / f"{size}_reference.npz"))


def golden_greedy(size: str) -> dict:
    return json.loads((GOLDEN / f"brief_{size}_greedy.json").read_text())


@pytest.fixture(scope="session")
def export_file(tmp_path_factory):
    """export_file(checkpoint_name) -> path of its .onnx export, made once per session."""
    pytest.importorskip("torch")
    from micromixer_edge.export.checkpoint import load_checkpoint
    from micromixer_edge.export.onnx_export import export
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            loaded = load_checkpoint(GOLDEN / f"{name}.pt")
            out = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            export(loaded.model, loaded.size, loaded.sha256, out, check=False)
            cache[name] = out
        return cache[name]
    return make


@pytest.fixture(scope="session")
def bundled(tmp_path_factory):
    """kind -> the bundled 1m weights exported ("float"), and quantized by each int8 mode."""
    pytest.importorskip("torch")
    from micromixer_edge.export.api import export_checkpoint
    from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
    d = tmp_path_factory.mktemp("bundled")
    out = {"float": d / "float.onnx"}
    export_checkpoint(size="1m", output=out["float"], log=lambda *a, **k: None)
    for mode in ("int8", "portable", "int8-block", "dynamic"):
        out[mode] = d / f"{mode}.onnx"
        quantize_file(out["float"], out[mode], QuantOptions(mode=mode))
    return out


@pytest.fixture(scope="module")
def server(bundled):
    """mixer-serve on the bundled int8 with its default flags, one per test module (a module that
    needs other flags defines its own `server`)."""
    from serving import Served
    s = Served(bundled["int8"])
    yield s
    assert s.stop() == 0


def eos_biased(src: Path, dst: Path, bias: float = 60.0) -> Path:
    """A copy of a model file whose logits get +bias on eos: its top logit is always eos, so by the
    documented behaviour every row ends at once with finish_reason "stop" (unless it ignores eos,
    and then byte 2 must never appear)."""
    import onnx
    from onnx import helper, numpy_helper
    from micromixer_edge.format import EOS_ID, LOGITS, VOCAB_SIZE
    proto = onnx.load(str(src))
    for node in proto.graph.node:
        node.output[:] = [f"{LOGITS}_unbiased" if o == LOGITS else o for o in node.output]
    vec = np.zeros(VOCAB_SIZE, np.float32)
    vec[EOS_ID] = bias
    proto.graph.initializer.append(numpy_helper.from_array(vec, "eos_bias"))
    proto.graph.node.append(helper.make_node("Add", [f"{LOGITS}_unbiased", "eos_bias"], [LOGITS]))
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="session")
def eos_models(bundled, tmp_path_factory):
    """kind ("float", "int8") -> the bundled model with eos always on top (eos_biased)."""
    d = tmp_path_factory.mktemp("eos")
    return {kind: eos_biased(bundled[kind], d / f"eos-{kind}.onnx") for kind in ("float", "int8")}
