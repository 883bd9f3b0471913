"""Writing exported files: the metadata entry, the self-test vector, checked self-contained saves.

Shared by the exporter and the quantizer; needs onnx and onnxruntime, not torch.
"""
from __future__ import annotations

import json
import os

import onnx

from . import format as fmt
from .runtime.model import MixerModel
from .runtime.selftest import SELFTEST_KEY, make_vector


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    """Write (or replace) the contract's metadata entry."""
    for prop in list(proto.metadata_props):
        if prop.key == fmt.METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=fmt.METADATA_KEY, value=json.dumps(meta, sort_keys=True))


def add_selftest(proto: onnx.ModelProto, meta: dict, path: str) -> dict:
    """Store the greedy bytes this machine produces for the file at `path` (same graph as proto)."""
    meta = {**meta, SELFTEST_KEY: make_vector(MixerModel(path))}
    set_metadata(proto, meta)
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
