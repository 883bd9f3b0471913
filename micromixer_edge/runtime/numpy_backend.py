"""Run an exported .onnx file with numpy alone: for boards without an onnxruntime wheel (armv7).

The file is read by a small protobuf reader; every node whose inputs are all constant (for
example the DequantizeLinear of an int8 weight, or a 4-bit block-quantized matrix) is computed once
at load, so int8/int4 weights are dequantized then; the rest is interpreted op by op, in the
graph's order (ONNX files are topologically sorted). Same `run(...)` interface as onnxruntime.

Indices, shapes, axes and sizes go to numpy as `np.intp` (`_index`): ONNX gives them as int64, and
on a 32-bit board (armv7) numpy's index type is int32, which np.take will not cast int64 to. A
file the backend cannot run, at load or on its first call, is a one-line error, never a traceback.
"""
from __future__ import annotations

import math
import os

import numpy as np


from ..errors import FormatError, MixerError
from .protobuf import DTYPES, read_model

_SQRT1_2 = 1 / math.sqrt(2)


def _index(v) -> np.ndarray:
    """ONNX's int64 indices or sizes as numpy's own index type: int32 on a 32-bit platform (values
    past its range are refused, not wrapped)."""
    v = np.asarray(v)
    if v.dtype == np.intp:
        return v
    if v.size and (v.max() > np.iinfo(np.intp).max or v.min() < np.iinfo(np.intp).min):
        worst = int(v.max()) if v.max() > np.iinfo(np.intp).max else int(v.min())
        raise MixerError(f"an index of {worst} does not fit this platform's {np.dtype(np.intp)}")
    return v.astype(np.intp)


def _ints(v) -> tuple[int, ...]:
    """A 1-D ONNX int64 tensor (shape, axes, split sizes) as Python ints."""
    return tuple(int(d) for d in np.asarray(v).reshape(-1))


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and GELU needs it."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (s * (1.0 - poly * np.exp(-a * a))).astype(x.dtype)


def _layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5, **_):
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = np.square(x - mean).mean(axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon) * scale
    return (y + bias if bias is not None else y).astype(x.dtype)


def _slice(x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(max(min(e, 2**62), -2**62)), int(st))
    return x[tuple(index)]


def _split(x, split=None, axis=0, num_outputs=None):
    if split is None:
        n = num_outputs
        size = -(-x.shape[axis] // n)
        split = [size] * (n - 1) + [x.shape[axis] - size * (n - 1)]
    ends = np.cumsum(_ints(split))[:-1]
    return tuple(np.split(x, [int(e) for e in ends], axis=int(axis)))


def _reshape(x, shape, allowzero=0):
    shape = [x.shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(_ints(shape))]
    return x.reshape(shape)


def _dynamic_quantize(x):
    """uint8 quantization of an activation, as the ONNX spec defines it (round half to even)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zp, np.uint8)


def _dequantize(x, scale, zero_point=None, axis=1, block_size=0, **_):
    x = x.astype(np.float32) - (zero_point.astype(np.float32) if zero_point is not None else 0)
    if np.ndim(scale) and np.ndim(x) > 1:  # per-axis
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return (x * scale).astype(np.float32)


def _quantize(x, scale, zero_point=None, axis=1, block_size=0, output_dtype=0, **_):
    """QuantizeLinear: per tensor, or (int8 per row) with a scale shaped (..., 1) for the last axis
    in one block. An all-zero row has scale 0: its codes are arbitrary (x / 0), as onnxruntime's
    are, and the MatMul multiplies them by that 0."""
    zp = zero_point if zero_point is not None else np.zeros((), DTYPES.get(output_dtype, np.uint8))
    info = np.iinfo(zp.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nan_to_num(np.rint(x / scale), nan=0.0)
    return np.clip(q + zp.astype(np.float32), info.min, info.max).astype(zp.dtype)


def _matmul_integer_to_float(a, b, a_scale, b_scale, a_zp=None, b_zp=None, bias=None):
    """com.microsoft.MatMulIntegerToFloat: the exact integer product, times the row's and the
    column's scale."""
    acc = np.matmul(a.astype(np.int32) - (a_zp.astype(np.int32) if a_zp is not None else 0),
                    b.astype(np.int32) - (b_zp.astype(np.int32) if b_zp is not None else 0))
    out = (acc.astype(np.float32) * b_scale) * a_scale  # onnxruntime's order: the same bits
    return out if bias is None else out + bias


def _matmul_rows(a, b):
    """MatMul one row at a time (a stack of (1, K) x (K, N) products): BLAS would round a
    (rows, K) x (K, N) product differently with the number of rows, and the int8 model's rounding
    of the next activation would turn that last-bit difference into a batch-dependent byte."""
    if b.ndim != 2 or a.ndim < 2:
        return np.matmul(a, b)
    return np.matmul(a[..., None, :], b)[..., 0, :]


def _matmul_nbits_codes(b, scales, zero_points=None, K=0, N=0, bits=4, block_size=32, **_):
    """MatMulNBits' packed (N, blocks, blob) uint8 weight -> signed codes (N, K) and scales
    (N, blocks), zero points already subtracted."""
    if bits not in (4, 8):
        raise MixerError(f"MatMulNBits with {bits} bits is not supported by the numpy backend")
    blocks = -(-K // block_size)
    if bits == 4:
        q = np.stack([b & 0x0F, b >> 4], -1).reshape(N, -1)[:, :K].astype(np.float32)
        zp = (np.full((N, blocks), 8.0, np.float32) if zero_points is None else
              np.stack([zero_points & 0x0F, zero_points >> 4], -1).reshape(N, -1)[:, :blocks].astype(np.float32))
    else:
        q = b.reshape(N, -1)[:, :K].astype(np.float32)
        zp = (np.full((N, blocks), 128.0, np.float32) if zero_points is None else
              zero_points.reshape(N, blocks).astype(np.float32))
    return q - np.repeat(zp, block_size, 1)[:, :K], scales.reshape(N, blocks).astype(np.float32)


def _matmul_nbits_weight(*args, K=0, block_size=32, **attrs):
    """MatMulNBits' packed weight -> float (K, N), for a plain MatMul."""
    codes, scales = _matmul_nbits_codes(*args, K=K, block_size=block_size, **attrs)
    return np.ascontiguousarray((codes * np.repeat(scales, block_size, 1)[:, :K]).T)


def _matmul_int8_blocks(a, codes, scales, bias=None, block_size=32):
    """MatMulNBits with accuracy_level 4 (onnxruntime's MLAS CompInt8): each row of `a` is
    quantized to int8 per block of K with scale max|a|/127, round half to even; the int dot
    products of a block are exact, then scaled by both scales and summed over the blocks.
    a (..., K), codes (N, K) float holding integers, scales (N, blocks) -> (..., N)."""
    n, k = codes.shape
    blocks = scales.shape[1]
    x = np.zeros((*a.shape[:-1], blocks * block_size), np.float32)
    x[..., :k] = a
    x = x.reshape(*a.shape[:-1], blocks, block_size)
    amax = np.abs(x).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    qa = np.rint(x * inv)  # (..., blocks, block)
    qb = np.zeros((n, blocks * block_size), np.float32)
    qb[:, :k] = codes
    dots = np.einsum("...kb,nkb->...nk", qa, qb.reshape(n, blocks, block_size))  # exact integers
    a_scale = (amax[..., 0] / np.float32(127)).astype(np.float32)  # (..., blocks)
    y = (dots * a_scale[..., None, :] * scales).sum(-1, dtype=np.float32)
    return y if bias is None else (y + bias).astype(np.float32)


def _gather_block_weight(data, scales, zero_points=None, quantize_axis=1, block_size=32, **_):
    s = np.repeat(scales, block_size, axis=quantize_axis)
    zp = 0 if zero_points is None else np.repeat(zero_points, block_size, axis=quantize_axis).astype(np.float32)
    index = tuple(slice(0, n) for n in data.shape)
    return ((data.astype(np.float32) - (zp[index] if np.ndim(zp) else zp)) * s[index]).astype(np.float32)


def _cumsum(x, axis, exclusive=0, reverse=0):
    if exclusive or reverse:
        raise MixerError("CumSum with exclusive/reverse is not supported by the numpy backend")
    return np.cumsum(x, axis=int(axis), dtype=x.dtype)


OPS = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "Div": lambda a, b: (a / b).astype(a.dtype) if a.dtype.kind == "f" else a // b,
    "MatMul": _matmul_rows, "Cos": np.cos, "Sin": np.sin, "Sqrt": np.sqrt, "Erf": erf,
    "Gelu": lambda x, approximate="none": (0.5 * x * (1 + erf(x * np.float32(_SQRT1_2)))).astype(x.dtype),
    "LayerNormalization": _layer_norm,
    "CumSum": _cumsum,
    "Split": _split,
    "Slice": _slice,
    "Gather": lambda x, i, axis=0: np.take(x, _index(i), axis=int(axis)),
    "Transpose": lambda x, perm=None: np.transpose(x, None if perm is None else _ints(perm)),
    "Shape": lambda x, start=0, end=None: np.array(x.shape[start:end], np.int64),
    "Squeeze": lambda x, axes=None: np.squeeze(x, _ints(axes) if axes is not None else None),
    "Unsqueeze": lambda x, axes: np.expand_dims(x, _ints(axes)),
    "Range": lambda start, limit, delta: np.arange(start, limit, delta, dtype=np.asarray(start).dtype),
    "Reshape": _reshape,
    "Cast": lambda x, to: x.astype(DTYPES[to]),
    "Concat": lambda *xs, axis: np.concatenate(xs, axis=int(axis)),
    "Identity": lambda x: x,
    "Abs": np.abs,
    "ReduceMax": lambda x, axes=None, keepdims=1: np.max(x, axis=None if axes is None else _ints(axes),
                                                         keepdims=bool(keepdims)),
    "Expand": lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, _ints(shape))),
    "MatMulIntegerToFloat": _matmul_integer_to_float,
    "DynamicQuantizeLinear": _dynamic_quantize,
    "MatMulInteger": lambda a, b, a_zp=None, b_zp=None: np.matmul(
        a.astype(np.int32) - (a_zp.astype(np.int32) if a_zp is not None else 0),
        b.astype(np.int32) - (b_zp.astype(np.int32) if b_zp is not None else 0)),
    "DequantizeLinear": _dequantize,
    "QuantizeLinear": _quantize,
    "MatMulInt8Blocks": _matmul_int8_blocks,  # MatMulNBits, 8 bits, accuracy_level 4 (see below)
    "MatMulBias": lambda a, w, bias=None: np.matmul(a, w) if bias is None else np.matmul(a, w) + bias,
}
# block-quantized weights: dequantized once at load, then a plain MatMul / Gather
DEQUANTIZE_AT_LOAD = {
    "MatMulNBits": (1, _matmul_nbits_weight, "MatMulBias", lambda attrs: {}),
    "GatherBlockQuantized": (0, _gather_block_weight, "Gather", lambda a: {"axis": a.get("gather_axis", 0)}),
}


class _Meta:
    def __init__(self, props: dict):
        self.custom_metadata_map = props


class _Name:
    def __init__(self, name: str):
        self.name = name


class NumpySession:
    """A drop-in for onnxruntime.InferenceSession.run on MicroMixer exports."""

    def __init__(self, path: str | os.PathLike):
        with open(path, "rb") as f:
            model = read_model(f.read())
        self._meta, self._inputs, self._outputs = model["metadata"], model["inputs"], model["outputs"]
        self._consts = dict(model["initializers"])
        self._nodes = []
        for node in model["nodes"]:
            node = self._dequantize_weights(node)
            fn = OPS.get(node["op"])
            if fn is None:
                raise MixerError(f"operator {node['op']} is not supported by the numpy backend")
            if all(not i or i in self._consts for i in node["inputs"]):  # fold constants at load
                self._store(self._consts, node, self._call(fn, node, self._consts))
            else:
                self._nodes.append((fn, node))

    def _dequantize_weights(self, node: dict) -> dict:
        """MatMulNBits(a, w, scales, zp, _, bias) -> MatMul(a, float w) + bias, or for 8 bits at
        accuracy_level 4 the int8 block arithmetic of onnxruntime; likewise GatherBlockQuantized."""
        if node["op"] not in DEQUANTIZE_AT_LOAD:
            return node
        weight_at, dequantize, op, attrs = DEQUANTIZE_AT_LOAD[node["op"]]
        ins = node["inputs"]
        consts = [i for k, i in enumerate(ins) if k != 1 - weight_at and i]
        if not all(i in self._consts for i in consts):
            raise MixerError(f"{node['op']} with non-constant weights is not supported by the numpy backend")
        name = ins[weight_at] + "/dequantized"
        extra = [self._consts[i] if i else None for i in ins[2:4]]
        other = ins[1 - weight_at]
        if node["op"] == "MatMulNBits":
            bias = ins[5] if len(ins) > 5 else ""
            if node["attrs"].get("bits") == 8 and node["attrs"].get("accuracy_level") == 4:
                codes, scales = _matmul_nbits_codes(self._consts[ins[1]], *extra, **node["attrs"])
                self._consts[name], self._consts[name + "/scales"] = codes, scales
                return {**node, "op": "MatMulInt8Blocks", "inputs": [other, name, name + "/scales", bias],
                        "attrs": {"block_size": node["attrs"]["block_size"]}, "domain": ""}
            self._consts[name] = dequantize(self._consts[ins[1]], *extra, **node["attrs"])
            return {**node, "op": op, "inputs": [other, name, bias], "attrs": {}, "domain": ""}
        self._consts[name] = dequantize(self._consts[ins[weight_at]], *extra, **node["attrs"])
        new_inputs = [other, name] if weight_at == 1 else [name, other]
        return {**node, "op": op, "inputs": new_inputs, "attrs": attrs(node["attrs"]), "domain": ""}

    @staticmethod
    def _call(fn, node, values):
        args = [values[i] if i else None for i in node["inputs"]]
        while args and args[-1] is None:
            args.pop()
        return fn(*args, **node["attrs"])

    @staticmethod
    def _store(values, node, result):
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(node["outputs"], results):
            values[name] = np.asarray(value)

    def run(self, output_names, feeds: dict):
        values = {**self._consts, **feeds}
        for fn, node in self._nodes:
            try:
                self._store(values, node, self._call(fn, node, values))
            except MixerError:
                raise
            except Exception as e:  # noqa: BLE001 - a file this backend cannot run: one line
                raise FormatError(f"the numpy backend cannot run {node['op']} node {node.get('name') or '?'} "
                                  f"({type(e).__name__}: {str(e)[:200]})") from None
        missing = [n for n in (output_names or self._outputs) if n not in values]
        if missing:
            raise FormatError(f"no node of this file computes its output {missing[0]!r}")
        return [values[n] for n in (output_names or self._outputs)]

    def get_modelmeta(self):
        return _Meta(self._meta)

    def get_inputs(self):
        return [_Name(n) for n in self._inputs]

    def get_outputs(self):
        return [_Name(n) for n in self._outputs]
