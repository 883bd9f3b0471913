"""int8 and int4 models via onnxruntime.quantization.

The default (`int8`) is built to be faithful: int8 weights (per output column; the embedding
tables per row) that a session turns into float once, when it loads the file (constant folding),
so the arithmetic is the float export's: a row's bytes never depend on its batch neighbours, on
how its sequence was cut into calls, or on the CPU. `int8-block` computes in int8 (onnxruntime's
8-bit MatMulNBits quantizes each activation row in blocks of 32 at run time): invariant on one
machine, but each CPU's kernel rounds differently.

The output keeps the contract exactly: same inputs, outputs and dynamic dims, the metadata copied
with `quantization` set to the scheme's name, one self-contained file that passes onnx.checker.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnx import helper, numpy_helper

from ..errors import MixerError, FormatError
from .. import format as fmt
from .._files import check_output_path
from ..codec import encode_prompt, read_stories
from ..onnx_io import read_metadata, strip_debug_info, write_model
from ..runtime.model import MixerModel


MATMUL_GROUPS = ("head", "hyper", "channel")  # what --keep-float can leave in float


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    mode: str = fmt.DEFAULT_QUANT_MODE    # a key of format.QUANT_SCHEMES
    per_channel: bool = False
    float_parts: tuple[str, ...] = ()     # MatMul groups (MATMUL_GROUPS) kept in float
    embedding: bool = True                # int8 Gather of the embedding table (int8 modes)
    signed_weights: bool = True           # int8 weights as QInt8 (else QUInt8)
    block_size: int = 64                  # int4 block size (64 measured best on the 1m model)
    int8_block_size: int = 32             # int8 mode: 32 measured best (64 and 128 pad K=64)
    calibration_stories: int = 64         # static mode


def _nbits_quantizer():
    """onnxruntime's MatMulNBits quantizer, which needs the onnx-ir package (the export extra has it)."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise MixerError(f"this mode needs {e.name}: pip install 'micromixer-edge[export]'") from None
    return MatMulNBitsQuantizer


def load_micromixer(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict]:
    """A float MicroMixer export and its metadata; refuses other and already-quantized files."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.is_dir() else f"{path} is a directory")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise FormatError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise FormatError(f"{path} has external data; MicroMixer exports are self-contained files")
    meta = read_metadata(model)
    if meta["quantization"] != fmt.QUANT_NONE:
        raise FormatError(f"{path} is already quantized ({meta['quantization']}); "
                              "quantize the float export instead")
    return model, meta


def _head_matmul(model: onnx.ModelProto) -> str | None:
    """The MatMul that makes the logits, found by walking back from the output over layout ops."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get(fmt.LOGITS)
    while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
        node = producer.get(node.input[0])
    return node.name if node is not None and node.op_type == "MatMul" else None


def matmul_groups(model: onnx.ModelProto, hyper_dim: int) -> dict[str, list[str]]:
    """MatMul node names by role: the head makes the logits; hyper weights have the hyper width."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    head = _head_matmul(model)
    groups: dict[str, list[str]] = {g: [] for g in MATMUL_GROUPS}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        role = ("head" if node.name == head else
                "hyper" if hyper_dim in shapes.get(node.input[1], ()) else "channel")
        groups[role].append(node.name)
    return groups


class StoryReader(CalibrationDataReader):
    """Real inputs for calibration: chunks of stories, each with the running state before it."""

    def __init__(self, float_path: str, text_path: str, stories: int, seed: int = 0):
        model = MixerModel(float_path)
        rng = np.random.default_rng(seed)
        self._feeds = []
        for story in read_stories(text_path)[:stories]:
            ids = np.array(encode_prompt(story[:model.max_seq_len - 1]), np.int64)
            state, pos = model.new_state(), 0
            while pos < len(ids):  # a prefill chunk, then single-token steps, alternating
                n = int(rng.integers(1, 24)) if rng.random() < 0.5 else 1
                chunk = ids[None, pos:pos + n]
                self._feeds.append({fmt.INPUT_IDS: chunk, fmt.POSITION: state.position.copy(),
                                    fmt.STATE: state.sums.copy()})
                _, state = model.run(chunk, state)
                pos += chunk.shape[1]
        self._iter = iter(self._feeds)

    def get_next(self):
        return next(self._iter, None)


def _exclusions(model, meta, options: QuantOptions) -> list[str]:
    groups = matmul_groups(model, meta["hyper_hidden_dim"])
    names = [n for part in options.float_parts for n in groups[part]]
    if not options.embedding:
        names += [n.name for n in model.graph.node if n.op_type == "Gather" and
                  any(t.name == n.input[0] and len(t.dims) == 2 for t in model.graph.initializer)]
    return names


def _table_names(model: onnx.ModelProto) -> set[str]:
    """2-D float initializers read by a Gather: the embedding tables (lookup and RoPE-rotated)."""
    floats = {t.name for t in model.graph.initializer
              if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    return {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in floats}


def int8_constant(model: onnx.ModelProto, name: str, axis: int) -> None:
    """Replace the float initializer `name` by uint8 codes, one scale and zero point per slice
    along `axis`, and Cast -> Sub -> Mul nodes that rebuild it under the same name.

    Every input of those nodes is constant, so onnxruntime (and the numpy backend) fold them into
    a float tensor when the session loads: int8 on disk, float arithmetic at run time.
    """
    init = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(init).astype(np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    lo, hi = np.minimum(w.min(other, keepdims=True), 0), np.maximum(w.max(other, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, 255).astype(np.float32)
    codes = np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8)
    model.graph.initializer.remove(init)
    model.graph.initializer.extend([numpy_helper.from_array(codes, f"{name}_u8"),
                                    numpy_helper.from_array(zero, f"{name}_zero"),
                                    numpy_helper.from_array(scale, f"{name}_scale")])
    nodes = [helper.make_node("Cast", [f"{name}_u8"], [f"{name}_f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Sub", [f"{name}_f", f"{name}_zero"], [f"{name}_c"]),
             helper.make_node("Mul", [f"{name}_c", f"{name}_scale"], [name])]
    for i, node in enumerate(nodes):  # before every consumer: keep the graph topologically sorted
        model.graph.node.insert(i, node)


def fold_matmul_bias(model: onnx.ModelProto) -> None:
    """MatMulNBits -> Add(bias) becomes one MatMulNBits with its bias input (no separate Add)."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for node in list(model.graph.node):
        if node.op_type != "MatMulNBits" or len(consumers.get(node.output[0], ())) != 1:
            continue
        add = consumers[node.output[0]][0]
        bias = next((i for i in add.input if i != node.output[0]), None)
        n = next(a.i for a in node.attribute if a.name == "N")
        if add.op_type != "Add" or bias not in inits or tuple(inits[bias].dims) != (n,):
            continue
        node.input.extend([""] * (5 - len(node.input)) + [bias])  # input 5 of MatMulNBits: bias
        node.output[0] = add.output[0]
        model.graph.node.remove(add)


def _int8_block(model, meta, options: QuantOptions) -> onnx.ModelProto:
    q = _nbits_quantizer()(model, bits=8, block_size=options.int8_block_size, is_symmetric=True,
                             accuracy_level=4, op_types_to_quantize=("MatMul",),
                             nodes_to_exclude=_exclusions(model, meta, options), quant_axes=(("MatMul", 0),))
    q.process()
    out = q.model.model
    fold_matmul_bias(out)
    return _int8_tables(out, options)


def _weight_only(model, meta, options: QuantOptions) -> onnx.ModelProto:
    """Standard ONNX: every MatMul weight int8 per output column, the tables per row."""
    skip = set(_exclusions(model, meta, options))
    inits = {t.name: t for t in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.name not in skip
               and n.input[1] in inits and len(inits[n.input[1]].dims) == 2}
    for name in sorted(weights):
        int8_constant(model, name, axis=1)
    return _int8_tables(model, options)


def _int8_tables(model: onnx.ModelProto, options: QuantOptions) -> onnx.ModelProto:
    """Both int8 schemes: the embedding tables int8, one scale and zero point per byte's row."""
    if options.embedding:
        for name in _table_names(model):
            int8_constant(model, name, axis=0)
    return model


def _quantize_to(src: str, dst: str, model, meta, options: QuantOptions, calibration) -> None:
    wtype = QuantType.QInt8 if options.signed_weights else QuantType.QUInt8
    exclude = _exclusions(model, meta, options)
    ops = ["MatMul"] + (["Gather"] if options.embedding else [])
    if options.mode == "int8-block":
        onnx.save_model(_int8_block(model, meta, options), dst)
    elif options.mode == "int8":
        onnx.save_model(_weight_only(model, meta, options), dst)
    elif options.mode == "dynamic":
        quantize_dynamic(src, dst, op_types_to_quantize=ops, per_channel=options.per_channel,
                         weight_type=wtype, nodes_to_exclude=exclude)
    elif options.mode == "static":
        reader = StoryReader(src, calibration, options.calibration_stories)
        quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                        per_channel=options.per_channel, activation_type=QuantType.QInt8,
                        weight_type=wtype, nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": True})
    else:  # int4 (quantize_file has checked the mode)
        # the embedding Gather too (GatherBlockQuantized), blocks along the hidden axis
        ops4 = ("MatMul", "Gather") if options.embedding else ("MatMul",)
        q = _nbits_quantizer()(model, bits=4, block_size=options.block_size, is_symmetric=True,
                                 nodes_to_exclude=exclude, op_types_to_quantize=ops4,
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        onnx.save_model(q.model.model, dst)


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs every tensor at INFO on the root logger."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_file(src: str | os.PathLike, output: str | os.PathLike, options: QuantOptions = QuantOptions(),
                  calibration: str | os.PathLike | None = None) -> dict:
    """Quantize a float export into `output` (atomically); returns the new metadata."""
    out = check_output_path(output, src)
    if options.mode not in fmt.QUANT_SCHEMES:
        raise MixerError(f"unknown mode {options.mode!r}; choose one of {', '.join(fmt.QUANT_SCHEMES)}")
    if options.mode == "static":
        if calibration is None:
            raise MixerError("--mode static needs --calibration TEXT (stories separated by blank lines)")
        if not Path(calibration).is_file():
            raise FileNotFoundError(f"calibration file {calibration}: no such file")
    model, meta = load_micromixer(src)
    with tempfile.TemporaryDirectory(prefix="mixer-quantize-") as tmp, _quiet_logging():
        _quantize_to(os.fspath(src), os.path.join(tmp, "q.onnx"), model, meta, options,
                     calibration and os.fspath(calibration))
        qmodel = onnx.load(os.path.join(tmp, "q.onnx"))
    strip_debug_info(qmodel)
    meta = {**meta, "quantization": fmt.QUANT_SCHEMES[options.mode],
            "quantization_options": dataclasses.asdict(options)}
    return write_model(qmodel, meta, out)  # a new self-test vector: the float one does not hold
