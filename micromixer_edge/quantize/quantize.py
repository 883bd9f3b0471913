"""int8 models (format.QUANT_SCHEMES; docs/format.md has the table of what each is for).

- `int8` (default): int8 arithmetic with a scale per activation row (quantize/rowwise.py): a row's
  bytes never depend on its batch neighbours or on how its sequence was cut into calls.
- `portable`: int8 weights (per output column; the tables per row) that a session turns into float
  when it loads the file, so the arithmetic is the float export's: the same bytes on any CPU.
- `int8-block`: onnxruntime's 8-bit MatMulNBits, activations per row in blocks of 32: invariant on
  one machine; each CPU's kernel rounds differently; the fastest lone stream with a dot product.
- `dynamic`: onnxruntime.quantization's quantize_dynamic, one activation scale per tensor.

The output keeps the contract exactly: same inputs, outputs and dynamic dims, the metadata copied
with `quantization` set to the scheme's name, one self-contained file that passes onnx.checker.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnx import helper, numpy_helper

from ..errors import MixerError, FormatError
from .. import format as fmt
from .._files import check_output_path
from ..onnx_io import read_metadata, strip_debug_info, write_model
from .rowwise import quantize_rows


MATMUL_GROUPS = ("head", "hyper", "hyper-in", "channel")  # what --keep-float can leave in float
# int8 (per-row) keeps these in float: the hyper-network's first Linear of each layer (H -> hyper)
# reads the running mean, which quantizes worst (alone, layer 0's cost KL 0.00026 of 0.0004)
ROWWISE_FLOAT = ("hyper-in",)


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    mode: str = fmt.DEFAULT_QUANT_MODE    # a key of format.QUANT_SCHEMES
    per_channel: bool = False             # dynamic: a weight scale per output channel
    float_parts: tuple[str, ...] = ()     # MatMul groups (MATMUL_GROUPS) kept in float
    embedding: bool = True                # int8 Gather of the embedding table (int8 modes)
    signed_weights: bool = True           # dynamic: int8 weights as QInt8 (else QUInt8)
    int8_block_size: int = 32             # int8-block: 32 measured best (64 and 128 pad K=64)


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
    """MatMul node names by role: the head makes the logits; hyper weights have the hyper width,
    and hyper-in are those of them that map into it (H -> hyper_dim)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    head = _head_matmul(model)
    groups: dict[str, list[str]] = {g: [] for g in MATMUL_GROUPS}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        shape = shapes.get(node.input[1], ())
        role = "head" if node.name == head else "hyper" if hyper_dim in shape else "channel"
        groups[role].append(node.name)
        if role == "hyper" and shape[-1:] == (hyper_dim,):
            groups["hyper-in"].append(node.name)
    return groups


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
    """The float initializer `name` as uint8 codes, a scale and zero point per slice along `axis`
    (folded back to float when a session loads: int8 on disk, float arithmetic at run time)."""
    w = _float_initializer(model, name)
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    lo, hi = np.minimum(w.min(other, keepdims=True), 0), np.maximum(w.max(other, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, 255).astype(np.float32)
    _rebuilt_from_codes(model, name, np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8), scale, zero)


def _float_initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).astype(np.float32)


def _rebuilt_from_codes(model: onnx.ModelProto, name: str, codes: np.ndarray, scale: np.ndarray,
                        zero: np.ndarray | None = None) -> None:
    """Replace the initializer `name` by its codes, (zero point) and scale, and Cast -> (Sub) ->
    Mul nodes that rebuild it under the same name. Every input of those nodes is constant, so
    onnxruntime (and the numpy backend) fold them into a float tensor when the session loads."""
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == name))
    model.graph.initializer.extend([numpy_helper.from_array(codes, f"{name}_q"),
                                    numpy_helper.from_array(scale, f"{name}_scale")])
    nodes = [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=onnx.TensorProto.FLOAT)]
    if zero is not None:
        model.graph.initializer.append(numpy_helper.from_array(zero, f"{name}_zero"))
        nodes.append(helper.make_node("Sub", [f"{name}_f", f"{name}_zero"], [f"{name}_c"]))
    nodes.append(helper.make_node("Mul", [nodes[-1].output[0], f"{name}_scale"], [name]))
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


def _float_matmuls(model, meta, float_parts) -> tuple[set[str], list[str]]:
    """(names of MatMuls with a constant 2-D float weight read by no other node, the names kept
    in float by `float_parts`)."""
    groups = matmul_groups(model, meta["hyper_hidden_dim"])
    skip = [n for part in float_parts for n in groups[part]]
    inits = {t.name: t for t in model.graph.initializer}
    reads = collections.Counter(i for n in model.graph.node for i in n.input)
    weights = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2 and reads[n.input[1]] == 1}
    return weights, skip


def _rowwise(model, meta, options: QuantOptions) -> onnx.ModelProto:
    """int8 arithmetic with a scale per activation row (quantize/rowwise.py). The tables are
    int16 per row on disk (int8 ones cost top-1 98.3 -> 97.7 % here), float once loaded."""
    weights, skip = _float_matmuls(model, meta, tuple(options.float_parts) + ROWWISE_FLOAT)
    quantize_rows(model, weights - set(skip))
    if options.embedding:
        for name in sorted(_table_names(model)):
            int16_table(model, name)
    return model


def int16_table(model: onnx.ModelProto, name: str) -> None:
    """The float table `name` as int16 codes and a scale per row, rebuilt by Cast -> Mul under the
    same name (constant: a session folds it into float when it loads)."""
    w = _float_initializer(model, name)
    amax = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / 32767, 1).astype(np.float32)
    _rebuilt_from_codes(model, name, np.clip(np.rint(w / scale), -32767, 32767).astype(np.int16), scale)


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


def _quantize_to(src: str, dst: str, model, meta, options: QuantOptions) -> None:
    wtype = QuantType.QInt8 if options.signed_weights else QuantType.QUInt8
    exclude = _exclusions(model, meta, options)
    ops = ["MatMul"] + (["Gather"] if options.embedding else [])
    if options.mode == "int8":
        onnx.save_model(_rowwise(model, meta, options), dst)
    elif options.mode == "int8-block":
        onnx.save_model(_int8_block(model, meta, options), dst)
    elif options.mode == "portable":
        onnx.save_model(_weight_only(model, meta, options), dst)
    else:  # dynamic (quantize_file has checked the mode)
        quantize_dynamic(src, dst, op_types_to_quantize=ops, per_channel=options.per_channel,
                         weight_type=wtype, nodes_to_exclude=exclude)


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs every tensor at INFO on the root logger."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_file(src: str | os.PathLike, output: str | os.PathLike, options: QuantOptions = QuantOptions()) -> dict:
    """Quantize a float export into `output` (atomically); returns the new metadata."""
    out = check_output_path(output, src)
    if options.mode not in fmt.QUANT_SCHEMES:
        raise MixerError(f"unknown mode {options.mode!r}; choose one of {', '.join(fmt.QUANT_SCHEMES)}")
    model, meta = load_micromixer(src)
    with tempfile.TemporaryDirectory(prefix="mixer-quantize-") as tmp, _quiet_logging():
        _quantize_to(os.fspath(src), os.path.join(tmp, "q.onnx"), model, meta, options)
        qmodel = onnx.load(os.path.join(tmp, "q.onnx"))
    strip_debug_info(qmodel)
    meta = {**meta, "quantization": fmt.QUANT_SCHEMES[options.mode],
            "quantization_options": dataclasses.asdict(options)}
    return write_model(qmodel, meta, out)  # a new self-test vector: the float one does not hold
