"""Writing exported files: the metadata entry, the self-test vector, checked self-contained saves.

Shared by the exporter and the quantizer; needs onnx and onnxruntime, not torch.
"""
from __future__ import annotations

import json
import os

import onnx

from . import format as fmt
from ._files import atomic_output
from .runtime.model import MixerModel
from .runtime.selftest import SELFTEST_KEY, make_vector


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    """Write (or replace) the contract's metadata entry."""
    for prop in list(proto.metadata_props):
        if prop.key == fmt.METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=fmt.METADATA_KEY, value=json.dumps(meta, sort_keys=True))


def write_model(proto: onnx.ModelProto, meta: dict, output: str | os.PathLike, check=None) -> dict:
    """The one write path of every model file: save under a temporary name, let `check(path)`
    refuse it (export validates against PyTorch), store the self-test vector this machine makes
    for that very file, save again, and only then rename over `output`. Returns the metadata."""
    meta = {k: v for k, v in meta.items() if k != SELFTEST_KEY}
    set_metadata(proto, meta)
    with atomic_output(output) as tmp:
        save_model(proto, tmp)
        if check is not None:
            check(tmp)
        meta = {**meta, SELFTEST_KEY: make_vector(MixerModel(tmp))}
        set_metadata(proto, meta)
        save_model(proto, tmp)
    return meta


def read_metadata(proto: onnx.ModelProto) -> dict:
    return fmt.parse_metadata({p.key: p.value for p in proto.metadata_props})


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (stack traces with the builder's paths, FX names):
    ~100 KB a file that no runner reads."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Check and write one self-contained file (no external-data side file)."""
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, os.fspath(path), save_as_external_data=False)
