"""The numpy backend (boards without onnxruntime) computes what onnxruntime computes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from conftest import ROOT
from micromixer_edge import format as fmt
from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.generate import generate


@pytest.fixture(scope="module")
def models(export_file, tmp_path_factory):
    """'none' -> the float brief_1m export; each quantization mode -> its quantized file."""
    src = export_file("brief_1m_model")
    out = {"none": src}
    for mode in fmt.QUANT_SCHEMES:
        out[mode] = tmp_path_factory.mktemp("np") / f"{mode}.onnx"
        quantize_file(src, out[mode], QuantOptions(mode=mode))
    return out


# int8, dynamic, int8-block and static quantize activations (static even the logits): an upstream
# difference of one float ulp (numpy's and onnxruntime's sin differ by 6e-8) can flip one rounding,
# which moves the logits downstream (measured up to 0.049 for int8, 0.046 for dynamic, 0.098 for
# int8-block, one logit quantum of 0.086 for static; the numpy backend's int8 arithmetic alone
# matches onnxruntime's to float rounding, tested below). The other kinds stay within 1e-5.
ATOL = {"none": 1e-4, "int8": 0.25, "portable": 1e-4, "int8-block": 0.25, "dynamic": 0.1}


@pytest.mark.parametrize("kind", ["none", *fmt.QUANT_SCHEMES])
def test_numpy_backend_matches_onnxruntime(models, kind):
    a, b = MixerModel(models[kind], backend="onnxruntime"), MixerModel(models[kind], backend="numpy")
    assert (a.backend, b.backend) == ("onnxruntime", "numpy")
    ids = np.array([[1, *b"Once upon a time, there"], [1, *b"The little dog ran fast"]])
    state = a.new_state(2)
    state.sums[:] = np.random.default_rng(0).normal(scale=5, size=state.sums.shape)
    state.position[:] = [0, 300]
    (la, sa), (lb, sb) = a.prefill(ids, state), b.prefill(ids, state)
    np.testing.assert_allclose(lb, la, atol=ATOL[kind], rtol=0)
    np.testing.assert_allclose(sb.sums, sa.sums, atol=ATOL[kind], rtol=1e-6)
    for token in (65, 32, 2):  # and single steps
        (la, sa), (lb, sb) = a.step([token, token], sa), b.step([token, token], sb)
        np.testing.assert_allclose(lb, la, atol=ATOL[kind], rtol=0)


def test_runs_without_onnxruntime_or_torch(models):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["onnxruntime"] = None  # as on 32-bit Raspberry Pi OS: no wheel
        from micromixer_edge.runtime.cli import main
        sys.argv = ["mixer-run", {str(models["dynamic"])!r}, "--selftest"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("selftest PASS") and "numpy" in proc.stdout


def test_same_greedy_text(models):
    options = GenerateOptions.of(max_new_tokens=80, temperature=0)
    texts = {b: generate(MixerModel(models["none"], backend=b), "Lily and Ben", options)
             for b in ("onnxruntime", "numpy")}
    assert texts["onnxruntime"] == texts["numpy"]


@pytest.mark.parametrize("k, n, rows", [(224, 576, 1), (576, 224, 5), (64, 448, 3)])
def test_int8_block_arithmetic_matches_onnxruntime(tmp_path, k, n, rows):
    """One 8-bit MatMulNBits (accuracy_level 4): the numpy backend's per-row, per-block int8
    arithmetic equals onnxruntime's kernel to float rounding, where plain float weights would not."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from micromixer_edge.runtime import numpy_backend as nb
    rng = np.random.default_rng(k)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array((rng.normal(size=(k, n)) * 0.05).astype(np.float32), "w")])
    q = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), bits=8,
                             block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    node, inits = q.model.model.graph.node[0], {t.name: numpy_helper.to_array(t) for t in q.model.model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    onnx.save(q.model.model, tmp_path / "m.onnx")
    a = rng.normal(size=(rows, k)).astype(np.float32)
    import onnxruntime as ort
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    codes, scales = nb._matmul_nbits_codes(inits[node.input[1]], inits[node.input[2]], **attrs)
    np.testing.assert_allclose(nb._matmul_int8_blocks(a, codes, scales, block_size=32), want, atol=1e-5, rtol=0)
    weight_only = a @ nb._matmul_nbits_weight(inits[node.input[1]], inits[node.input[2]], **attrs)
    assert np.abs(weight_only - want).max() > 1e-3  # so the test can tell the two apart


@pytest.mark.parametrize("rows", [1, 5])
def test_int8_row_arithmetic_matches_onnxruntime(tmp_path, rows):
    """The default int8's MatMul (quantize/rowwise.py): a scale per row, QuantizeLinear, then
    MatMulIntegerToFloat; the numpy backend's integer arithmetic equals onnxruntime's to float
    rounding, and an all-zero row gives exactly 0."""
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort
    from micromixer_edge.quantize.rowwise import quantize_rows
    from micromixer_edge.runtime.numpy_backend import NumpySession
    k, n, rng = 224, 576, np.random.default_rng(rows)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
                              [numpy_helper.from_array((rng.normal(size=(k, n)) * 0.05).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    quantize_rows(model, {"mm"})
    onnx.save(model, tmp_path / "m.onnx")
    a = rng.normal(size=(1, rows + 1, k)).astype(np.float32)
    a[0, 0] = 0  # and `rows` more
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    got = NumpySession(tmp_path / "m.onnx").run(None, {"a": a})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)
    assert not want[0, 0].any()
    assert np.abs(a @ numpy_helper.to_array(graph.initializer[0]) - want).max() > 1e-3  # int8, not float


@pytest.mark.parametrize("scheme", ["int8-static-qdq", "int4-matmulnbits"])
def test_files_of_retired_schemes_still_load_and_run(models, tmp_path, scheme):
    """Files written before static and int4 were retired: built here the way 0.1 built them
    (onnxruntime.quantization's quantize_static and 4-bit MatMulNBitsQuantizer), they load in
    both backends, agree, and pass their own self-test."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from micromixer_edge.onnx_io import read_metadata, write_model
    from micromixer_edge.quantize.quantize import _nbits_quantizer
    from micromixer_edge.runtime.selftest import run_selftest
    src = str(models["none"])
    if scheme == "int8-static-qdq":
        feeds = iter([{fmt.INPUT_IDS: np.array([[1, *b"Once upon a time"]]), fmt.POSITION: np.zeros(1, np.int64),
                       fmt.STATE: np.zeros((3, 1, 224), np.float32)}])
        reader = type("R", (CalibrationDataReader,), {"get_next": lambda self: next(feeds, None)})()
        quantize_static(src, str(tmp_path / "q.onnx"), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True})
        proto = onnx.load(str(tmp_path / "q.onnx"))
    else:
        q = _nbits_quantizer()(onnx.load(src), bits=4, block_size=64, is_symmetric=True,
                               op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        proto = q.model.model
    path = tmp_path / f"{scheme}.onnx"
    write_model(proto, {**read_metadata(onnx.load(src)), "quantization": scheme}, path)
    ort_model, np_model = MixerModel(path), MixerModel(path, backend="numpy")
    assert ort_model.meta["quantization"] == np_model.meta["quantization"] == scheme
    assert run_selftest(ort_model).passed
    ids = np.array([[1, *b"Once upon a time"]])
    np.testing.assert_allclose(np_model.prefill(ids)[0], ort_model.prefill(ids)[0], atol=0.25, rtol=0)


@pytest.mark.parametrize("kind", ["none", "int8", "portable"])
def test_numpy_backend_rows_are_batch_invariant(models, kind):
    """A row's logits in the numpy backend do not depend on its batch neighbours, bit for bit
    (MatMul row by row: BLAS rounds a many-row product otherwise, which int8 would amplify)."""
    model, rng = MixerModel(models[kind], backend="numpy"), np.random.default_rng(1)
    ids = rng.integers(3, 256, (4, 9))
    state = model.new_state(4)
    state.position[:] = [0, 7, 120, 3]
    state.sums[:] = rng.normal(scale=3, size=state.sums.shape).astype(np.float32)
    together, _ = model.prefill(ids, state)
    for i in range(4):
        np.testing.assert_array_equal(together[i], model.prefill(ids[i:i + 1], state.rows([i]))[0][0])


def test_a_file_the_backend_cannot_run_is_one_line(models, tmp_path):
    """A node that fails when it runs (here a Reshape whose shape cannot hold the tensor) is a
    one-line error naming the op, and mixer-run exits non-zero without a traceback."""
    from micromixer_edge.runtime.cli import main  # noqa: F401 - the CLI is what the test drives
    proto = onnx.load(str(models["none"]))
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    bad = onnx.helper.make_tensor(reshape.input[1] + "/bad", onnx.TensorProto.INT64, [3], [7, 11, 13])
    proto.graph.initializer.append(bad)
    reshape.input[1] = bad.name
    onnx.save(proto, tmp_path / "bad.onnx")
    proc = subprocess.run([sys.executable, "-m", "micromixer_edge.runtime.cli", str(tmp_path / "bad.onnx"),
                           "--backend", "numpy", "-p", "Hi", "-n", "3"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "numpy backend cannot run Reshape" in proc.stderr


@pytest.mark.parametrize("kind", ["none", "int8", "portable"])
def test_indices_reach_numpy_as_its_own_index_type(models, monkeypatch, kind):
    """np.take on a 32-bit numpy refuses int64 indices (it casts them 'safe'ly to its int32 intp):
    every index the backend hands it must be np.intp. Played here as a 32-bit numpy would: intp
    is int32, and np.take takes nothing else (the int64 the graph gives fails)."""
    from micromixer_edge.runtime import numpy_backend as nb
    real, seen = np.take, []

    def take_32bit(a, indices, axis=None, **kw):
        seen.append(np.asarray(indices).dtype)
        assert np.asarray(indices).dtype == np.int32, "np.take got non-intp indices"
        return real(a, indices, axis=axis, **kw)
    monkeypatch.setattr(nb.np, "intp", np.int32)
    monkeypatch.setattr(nb.np, "take", take_32bit)
    model = MixerModel(models[kind], backend="numpy")
    logits, _ = model.prefill(np.array([[1, *b"Once upon"]], np.int64))
    monkeypatch.undo()
    want, _ = MixerModel(models[kind], backend="numpy").prefill(np.array([[1, *b"Once upon"]], np.int64))
    assert seen and np.array_equal(logits, want)  # (the embedding is a Gather)
