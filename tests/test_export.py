"""The exported ONNX file: parity with the golden logits, the contract, and the CLI."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")  # the export extra; the fast tier runs without it


from conftest import ATOL, GOLDEN, golden_reference
from micromixer_edge import format as fmt
from micromixer_edge.export.cli import export_command


def _run(sess, ids, position, state):
    return sess.run(None, {"input_ids": ids, "position": np.asarray(position, np.int64), "state": state})


def _chunked(sess, ids, sizes, hidden):
    state, pos, out = np.zeros((3, 1, hidden), np.float32), 0, []
    for n in sizes:
        logits, state = _run(sess, ids[None, pos:pos + n], [pos], state)
        out.append(logits[0])
        pos += n
    return np.concatenate(out)


@pytest.mark.parametrize("size", ["100k", "1m"])
def test_onnx_matches_golden_logits(export_file, size):
    """(a) one call, (b) token by token, (c) two chunks, (d) a batch of two different prompts."""
    sess = ort.InferenceSession(str(export_file(f"{size}_model")), providers=["CPUExecutionProvider"])
    ref = golden_reference(size)
    hidden = fmt.SIZES[size].hidden_dim
    for i in range(4):
        ids, want = ref[f"prompt{i}"], ref[f"logits{i}"]
        for sizes in ([len(ids)], [1] * len(ids), [len(ids) // 2, len(ids) - len(ids) // 2]):
            np.testing.assert_allclose(_chunked(sess, ids, sizes, hidden), want, atol=ATOL, rtol=1e-5)
    # (d) rows 0 and 2 differ in length: row 1 continues prompt 2 from position 3 with its state
    a, b = ref["prompt0"], ref["prompt2"]
    _, state_b = _run(sess, b[None, :3], [0], np.zeros((3, 1, hidden), np.float32))
    state = np.concatenate([np.zeros_like(state_b), state_b], axis=1)
    n = 8
    logits, _ = _run(sess, np.stack([a[:n], b[3:3 + n]]), [0, 3], state)
    np.testing.assert_allclose(logits[0], ref["logits0"][:n], atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(logits[1], ref["logits2"][3:3 + n], atol=ATOL, rtol=1e-5)


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_contract(export_file):
    path = export_file("1m_model")
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    assert list(inputs) == ["input_ids", "position", "state"]
    assert list(outputs) == ["logits", "state_out"]
    types = {n: v.type.tensor_type.elem_type for n, v in {**inputs, **outputs}.items()}
    assert types == {"input_ids": onnx.TensorProto.INT64, "position": onnx.TensorProto.INT64,
                     "state": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT,
                     "state_out": onnx.TensorProto.FLOAT}
    batch, seq = _dims(inputs["input_ids"])
    assert isinstance(batch, str) and isinstance(seq, str) and batch != seq
    assert _dims(inputs["position"]) == [batch]
    assert _dims(inputs["state"]) == [3, batch, 224]
    assert _dims(outputs["logits"]) == [batch, seq, 256]
    assert _dims(outputs["state_out"]) == [3, batch, 224]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["micromixer"])
    import hashlib
    assert meta == {
        "format_version": 1, "size": "1m", "vocab_size": 256, "max_seq_len": 256, "hidden_dim": 224,
        "channel_mlp_dim": 576, "num_layers": 3, "hyper_hidden_dim": 64, "pad_id": 0, "bos_id": 1,
        "eos_id": 2, "quantization": "none",
        "checkpoint_sha256": hashlib.sha256((GOLDEN / "1m_model.pt").read_bytes()).hexdigest(),
        **{k: v for k, v in meta.items() if k not in fmt.REQUIRED_KEYS}}  # extra fields allowed


def test_lean_graph(export_file):
    """Single LayerNormalization/Gelu ops, positions computed (no table), constants folded."""
    model = onnx.load(str(export_file("1m_model")))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == 7 and ops.count("Gelu") == 6
    assert not {"Erf", "ReduceMean", "Dropout", "Pow", "Sqrt"} & set(ops)
    assert "Transpose" not in [n.op_type for n in model.graph.node
                               if any(i.startswith("model.") for i in n.input)]  # head pre-transposed
    assert len(ops) < 100
    # positions beyond any table: the graph handles position 10**6 like any other
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, state = _run(sess, np.array([[65]]), [10**6], np.ones((3, 1, 224), np.float32))
    assert np.isfinite(logits).all() and np.isfinite(state).all()


def test_cli_exports_and_validates(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, ["-c", str(GOLDEN / "100k_model.pt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    for case in ("one call", "token by token", "two chunks", "batch of two"):
        assert case in result.output
    assert "nodes" in result.output and "MB" in result.output
    assert fmt.parse_metadata({p.key: p.value for p in onnx.load(str(out)).metadata_props})["size"] == "100k"


def test_failed_validation_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, ["-c", str(GOLDEN / "100k_model.pt"), "-o", str(out),
                                                 "--atol", "0"])
    assert result.exit_code != 0
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_subprocess_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-m", "micromixer_edge.export", "--size", "100k",
           "-c", str(GOLDEN / "1m_model.pt"), "-o", str(tmp_path / "x.onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: " + str(GOLDEN / "1m_model.pt") +
                                   " holds a 1m model, not 100k (hidden size 224); drop --size or pick 1m")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("opset", range(fmt.MIN_OPSET, fmt.MAX_OPSET + 1))
def test_every_opset_the_help_promises(tmp_path, opset):
    """Each opset in --opset's range exports, passes the checker and matches PyTorch."""
    from micromixer_edge.export.cli import export_command
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, ["--checkpoint", str(GOLDEN / "100k_model.pt"), "-o", str(out),
                                                 "--opset", str(opset)])
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).opset_import[0].version == opset
    assert f"{fmt.MIN_OPSET} to {fmt.MAX_OPSET}" in CliRunner().invoke(export_command, ["--help"]).output
    rejected = CliRunner().invoke(export_command, ["--size", "1m", "-o", str(tmp_path / "x.onnx"), "--opset", "17"])
    assert rejected.exit_code != 0 and not (tmp_path / "x.onnx").exists()
