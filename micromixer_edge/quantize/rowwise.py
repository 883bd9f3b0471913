"""The default int8: int8 arithmetic with a scale per activation row, so rows stay independent.

Every MatMul with a constant weight W (K, N) becomes

    s  = ReduceMax(Abs(x), axis=-1, keepdims) / 127                   one scale per row of x (T, B, 1)
    xq = QuantizeLinear(x, s, 127, axis=-1, block_size=K)             uint8, zero point 127
    y  = com.microsoft.MatMulIntegerToFloat(xq, Wq, s, w_scale, 127)  Wq int8, a scale per column
    (the float graph's bias Add stays a separate node after it)

Each row of x (a batch element at a position) is quantized on its own, so a row's logits do not
depend on its batch neighbours nor on how its sequence was cut into calls; the integer GEMM is
the one onnxruntime batches well (MLAS's U8S8 kernels: AVX2, AVX-VNNI, AVX-512 VNNI; NEON smull
on a Cortex-A72, udot on a Cortex-A76). An activation read by several MatMuls is quantized once.
uint8 with zero point 127 rather than int8: s8s8 GEMMs measured ~8x slower here.

A Gelu output g is >= -0.16998, so it is quantized shifted instead, g + GELU_SHIFT >= 0 on the
whole uint8 range with zero point 0 (one more bit on the skewed Gelu outputs); the constant
GELU_SHIFT * colsum(W) comes off the MatMul's bias. An all-zero row gets scale 0, and
MatMulIntegerToFloat multiplies its product by that scale: exactly 0.

Traps avoided on purpose (onnxruntime 1.32; tests/test_faithful_int8.py checks against float):
- MatMulInteger -> Cast -> Mul -> Add is fused into MatMulIntegerToFloat with the bias multiplied
  by the row scale (wrong): no MatMulInteger is written.
- MatMulIntegerToFloat's own bias input is added before the per-row scale (so scaled by it):
  never used; the bias stays a separate Add.
- Neither op takes a zero point per row: the zero point is a scalar; blocked QuantizeLinear
  (opset 21) wants one shaped like its scale, so the scalar 127 is expanded once to (T, B, 1).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
BLOCKED_QUANTIZE_OPSET = 21  # QuantizeLinear's block_size
GELU_SHIFT = 0.171           # > -min Gelu (0.16997 erf form, 0.17004 tanh form)
CONSTANTS = {"rowq_zp127": np.array(127, np.uint8), "rowq_zp0": np.array(0, np.uint8),
             "rowq_axes": np.array([-1], np.int64), "rowq_127": np.array(127, np.float32),
             "rowq_255": np.array(255, np.float32), "rowq_shift": np.array(GELU_SHIFT, np.float32)}


def int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) -> int8 codes in [-127, 127] and a scale per column (zero point 0). -128 is never
    used: a Cortex-A72's kernel sums pairs of products in int16, where -128 * 255 twice overflows."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


class _Rewriter:
    """Builds the new node list in the graph's order, quantizing each activation once."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer = {out: n for n in self.graph.node for out in n.output}
        self.nodes: list = []
        self.quantized: dict[str, tuple[str, str, str, float]] = {}  # x -> (codes, scale, zero point, shift)
        self.zp_rows: dict = {}  # an activation's leading dims -> 127 expanded to its scale's shape
        self.leading = _leading_dims(model)
        self.corrections: dict[str, np.ndarray] = {}  # MatMul output -> what its bias loses (Gelu shift)

    def activation(self, x: str, K: int) -> tuple[str, str, str, float]:
        if x not in self.quantized:
            gelu = x in self.producer and self.producer[x].op_type == "Gelu"
            self.quantized[x] = self._shifted(x, K) if gelu else self._symmetric(x, K)
        return self.quantized[x]

    def _symmetric(self, x: str, K: int):
        p = f"{x}_rowq"
        self.nodes += [helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_Abs"),
                       helper.make_node("ReduceMax", [f"{p}_abs", "rowq_axes"], [f"{p}_max"], name=f"{p}_Max",
                                        keepdims=1),
                       helper.make_node("Div", [f"{p}_max", "rowq_127"], [f"{p}_scale"], name=f"{p}_Scale")]
        key = self.leading.get(x, x)  # activations of the same leading dims share one zero point
        if key not in self.zp_rows:  # 127 shaped like the scale, (T, B, 1)
            zp = self.zp_rows[key] = f"rowq_zp127_rows{len(self.zp_rows)}"
            self.nodes += [helper.make_node("Shape", [f"{p}_scale"], [f"{zp}_shape"], name=f"{zp}_Shape"),
                           helper.make_node("Expand", ["rowq_zp127", f"{zp}_shape"], [zp], name=f"{zp}_Expand")]
        self.nodes.append(helper.make_node("QuantizeLinear", [x, f"{p}_scale", self.zp_rows[key]], [f"{p}_u8"],
                                           name=f"{p}_Quantize", axis=-1, block_size=K))
        return f"{p}_u8", f"{p}_scale", "rowq_zp127", 0.0

    def _shifted(self, x: str, K: int):
        p = f"{x}_rowq"
        self.nodes += [helper.make_node("Add", [x, "rowq_shift"], [f"{p}_pos"], name=f"{p}_Shift"),
                       helper.make_node("ReduceMax", [f"{p}_pos", "rowq_axes"], [f"{p}_max"], name=f"{p}_Max",
                                        keepdims=1),
                       helper.make_node("Div", [f"{p}_max", "rowq_255"], [f"{p}_scale"], name=f"{p}_Scale"),
                       helper.make_node("QuantizeLinear", [f"{p}_pos", f"{p}_scale"], [f"{p}_u8"],
                                        name=f"{p}_Quantize", axis=-1, block_size=K, output_dtype=TensorProto.UINT8)]
        return f"{p}_u8", f"{p}_scale", "rowq_zp0", GELU_SHIFT

    def matmul(self, node) -> None:
        """One MatMul -> MatMulIntegerToFloat on the row-quantized input and int8 columns."""
        x, wname = node.input
        codes, scale = int8_columns(numpy_helper.to_array(self.inits[wname]).astype(np.float32))
        xq, xs, zp, shift = self.activation(x, codes.shape[0])
        self.graph.initializer.remove(self.inits[wname])
        self.graph.initializer.extend([numpy_helper.from_array(codes, f"{wname}_s8"),
                                       numpy_helper.from_array(scale, f"{wname}_scale")])
        self.nodes.append(helper.make_node("MatMulIntegerToFloat", [xq, f"{wname}_s8", xs, f"{wname}_scale", zp],
                                           list(node.output), name=node.name, domain=MS_DOMAIN))
        if shift:  # (g + c) @ W = g @ W + c * colsum(W)
            colsum = (codes.astype(np.float64) * scale.astype(np.float64)).sum(axis=0)
            self.corrections[node.output[0]] = (shift * colsum).astype(np.float32)


def _leading_dims(model: onnx.ModelProto) -> dict[str, tuple]:
    """Activation name -> its dims but the last (symbolic names or sizes), where shape inference
    knows them all."""
    out = {}
    for vi in onnx.shape_inference.infer_shapes(model).graph.value_info:
        dims = vi.type.tensor_type.shape.dim
        lead = tuple(d.dim_param or d.dim_value or None for d in dims[:-1])
        if dims and None not in lead:
            out[vi.name] = lead
    return out


def quantize_rows(model: onnx.ModelProto, matmuls: set[str]) -> None:
    """Rewrite the MatMuls named in `matmuls` (constant 2-D float weights) in place."""
    rw = _Rewriter(model)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in CONSTANTS.items())
    for node in model.graph.node:
        if node.name in matmuls:
            rw.matmul(node)
        else:
            rw.nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rw.nodes)
    for out, corr in rw.corrections.items():
        _take_off_bias(model, out, corr)
    opsets = {o.domain: o for o in model.opset_import}
    opsets[""].version = max(opsets[""].version, BLOCKED_QUANTIZE_OPSET)  # the export's ops mean the same in 21
    if MS_DOMAIN not in opsets:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _take_off_bias(model: onnx.ModelProto, out: str, corr: np.ndarray) -> None:
    """Subtract `corr` from the bias that the MatMul output `out` is added to (its own Add with a
    constant bias), or add an Add of -corr right after the MatMul."""
    inits = {t.name: t for t in model.graph.initializer}
    readers = [n for n in model.graph.node if out in n.input]
    bias = None
    if len(readers) == 1 and readers[0].op_type == "Add":
        bias = next(i for i in readers[0].input if i != out)
    shared = sum(bias in n.input for n in model.graph.node) > 1
    if bias in inits and tuple(inits[bias].dims) == corr.shape and not shared:
        b = numpy_helper.to_array(inits[bias]).astype(np.float32)
        inits[bias].CopyFrom(numpy_helper.from_array((b - corr).astype(np.float32), bias))
        return
    idx = next(i for i, n in enumerate(model.graph.node) if out in n.output)
    model.graph.node[idx].output[0] = f"{out}_shifted"
    model.graph.initializer.append(numpy_helper.from_array(-corr, f"{out}_shift_correction"))
    model.graph.node.insert(idx + 1, helper.make_node("Add", [f"{out}_shifted", f"{out}_shift_correction"], [out],
                                                      name=f"{out}_ShiftCorrection"))
