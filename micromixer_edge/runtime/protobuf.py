"""Just enough of the protobuf wire format to read an .onnx file with numpy alone.

For boards without onnxruntime (and without the onnx package): the model's metadata, nodes,
attributes and initializers. Field numbers follow onnx.proto3.
"""
from __future__ import annotations

import struct

import numpy as np

from ..errors import MixerError


# TensorProto.DataType -> numpy dtype (INT4 is unpacked separately)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64}
INT4 = 22
EXTERNAL = 1


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def fields(buf: bytes):
    """Yield (field number, wire type, value) of one message; value is int or bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise MixerError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire, value) -> list[int]:
    """A repeated int64 field: packed (bytes) or one varint."""
    if wire == 0:
        return [_signed(value)]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(_signed(v))
    return out


def tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims, dtype, name, raw, floats, ints32, ints64, external = [], 1, "", None, [], [], [], False
    for num, wire, v in fields(buf):
        if num == 1:
            dims += _ints(wire, v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats.append(np.frombuffer(v, "<f4") if wire == 2 else np.frombuffer(v, "<f4"))
        elif num == 5:
            ints32 += _ints(wire, v)
        elif num == 7:
            ints64 += _ints(wire, v)
        elif num == 8:
            name = v.decode()
        elif num == 9:
            raw = v
        elif num == 14:
            external = v == EXTERNAL
    if external:
        raise MixerError(f"initializer {name} has external data; exports are self-contained files")
    if dtype == INT4:  # two signed 4-bit values per byte, low nibble first
        packed = np.frombuffer(raw, np.uint8)
        nib = np.stack([packed & 0x0F, packed >> 4], -1).reshape(-1).astype(np.int8)
        arr = np.where(nib > 7, nib - 16, nib)[:int(np.prod(dims))].astype(np.int8)
        return name, arr.reshape(dims)
    np_dtype = DTYPES.get(dtype)
    if np_dtype is None:
        raise MixerError(f"initializer {name}: unsupported data type {dtype}")
    if raw is not None:
        arr = np.frombuffer(raw, np.dtype(np_dtype).newbyteorder("<"))
    elif floats:
        arr = np.concatenate(floats)
    elif ints64:
        arr = np.array(ints64, np_dtype)
    else:
        arr = np.array(ints32, np.int32).astype(np_dtype)  # int32_data carries the small int types
    return name, arr.astype(np_dtype).reshape(dims)


def attribute(buf: bytes):
    name, kind, value, ints, floats = "", 0, None, [], []
    for num, wire, v in fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            value = struct.unpack("<f", v)[0]
        elif num == 3:
            value = _signed(v)
        elif num == 4:
            value = v.decode()
        elif num == 5:
            value = tensor(v)[1]
        elif num == 7:
            floats += list(np.frombuffer(v, "<f4")) if wire == 2 else [struct.unpack("<f", v)[0]]
        elif num == 8:
            ints += _ints(wire, v)
        elif num == 20:
            kind = v
    if kind in (6, 7):  # FLOATS, INTS
        value = floats if kind == 6 else ints
    return name, value


def node(buf: bytes) -> dict:
    out = {"inputs": [], "outputs": [], "op": "", "domain": "", "attrs": {}}
    for num, _, v in fields(buf):
        if num == 1:
            out["inputs"].append(v.decode())
        elif num == 2:
            out["outputs"].append(v.decode())
        elif num == 3:
            out["name"] = v.decode()
        elif num == 4:
            out["op"] = v.decode()
        elif num == 5:
            k, val = attribute(v)
            out["attrs"][k] = val
        elif num == 7:
            out["domain"] = v.decode()
    return out


def _value_info_name(buf: bytes) -> str:
    return next(v.decode() for num, _, v in fields(buf) if num == 1)


def read_model(data: bytes) -> dict:
    """{'metadata': {k: v}, 'nodes': [...], 'initializers': {name: array}, 'inputs', 'outputs'}."""
    model = {"metadata": {}, "nodes": [], "initializers": {}, "inputs": [], "outputs": []}
    for num, _, v in fields(data):
        if num == 14:
            kv = {n: b.decode() for n, _, b in fields(v)}
            model["metadata"][kv.get(1, "")] = kv.get(2, "")
        elif num == 7:
            for gnum, _, g in fields(v):
                if gnum == 1:
                    model["nodes"].append(node(g))
                elif gnum == 5:
                    name, arr = tensor(g)
                    model["initializers"][name] = arr
                elif gnum == 11:
                    model["inputs"].append(_value_info_name(g))
                elif gnum == 12:
                    model["outputs"].append(_value_info_name(g))
    return model
