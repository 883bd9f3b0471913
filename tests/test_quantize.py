"""Quantized models keep the contract and stay close to float; the report is consistent."""
import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import DATA
from micromixer_edge.runtime.context import DEFAULT_CONTEXT_MODE
from micromixer_edge import format as fmt
from micromixer_edge.quantize.cli import quantize_command
from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.codec import read_stories
from micromixer_edge.runtime.evaluate import bits_per_byte

MODES = list(fmt.QUANT_SCHEMES)


@pytest.fixture(scope="module")
def quantized(export_file, tmp_path_factory):
    """mode -> quantized brief_1m (a trained checkpoint)."""
    src = export_file("brief_1m_model")
    out = {}
    for mode in MODES:
        path = tmp_path_factory.mktemp("q") / f"{mode}.onnx"
        quantize_file(src, path, QuantOptions(mode=mode))
        out[mode] = path
    return out


@pytest.mark.parametrize("mode", MODES)
def test_quantized_file_keeps_the_contract(export_file, quantized, mode):
    src = onnx.load(str(export_file("brief_1m_model")))
    q = onnx.load(str(quantized[mode]))
    onnx.checker.check_model(q, full_check=True)
    for a, b in ((src.graph.input, q.graph.input), (src.graph.output, q.graph.output)):
        assert [(v.name, v.type.SerializeToString()) for v in a] == [(v.name, v.type.SerializeToString()) for v in b]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in q.graph.initializer)
    meta_src = fmt.parse_metadata({p.key: p.value for p in src.metadata_props})
    meta = fmt.parse_metadata({p.key: p.value for p in q.metadata_props})
    assert meta["quantization"] == fmt.QUANT_SCHEMES[mode]
    assert {k: meta[k] for k in fmt.REQUIRED_KEYS if k != "quantization"} == \
           {k: meta_src[k] for k in fmt.REQUIRED_KEYS if k != "quantization"}
    # and it runs through the runtime, batch 2, seq 3
    model = MixerModel(quantized[mode])
    logits, state = model.prefill(np.array([[1, 72, 105], [1, 84, 104]]))
    assert logits.shape == (2, 3, 256) and state.sums.shape == (3, 2, 224)


FLOAT_SHAPES = {"head": {(224, 256)}, "hyper": {(224, 64), (64, 448)}, "hyper-in": {(224, 64)},
                "channel": {(224, 576), (576, 224)}}


@pytest.mark.parametrize("mode, part, kept", [("int8-block", "head", 1), ("int8-block", "hyper", 6),
                                              ("int8-block", "channel", 6), ("int8", None, 3),
                                              ("int8", "head", 4), ("int8", "hyper", 6)])
def test_keep_float_leaves_that_group_in_float(export_file, tmp_path, mode, part, kept):
    """--keep-float PART: exactly that group's MatMuls stay float (3 layers x 2, or the one head);
    int8 always keeps the three hyper-in MatMuls (H -> 64) in float."""
    out = tmp_path / "q.onnx"
    quantize_file(export_file("brief_1m_model"), out, QuantOptions(mode=mode, float_parts=(part,) if part else ()))
    q = onnx.load(str(out))
    float_mm = [n for n in q.graph.node if n.op_type == "MatMul"]
    assert len(float_mm) == kept
    weights = {t.name: tuple(t.dims) for t in q.graph.initializer}
    want = FLOAT_SHAPES[part] if part else set()
    assert {weights[n.input[1]] for n in float_mm} == want | (FLOAT_SHAPES["hyper-in"] if mode == "int8" else set())


@pytest.mark.parametrize("mode", MODES)
def test_int8_top1_agreement(export_file, quantized, mode):
    """On a trained checkpoint, int8 picks the same next byte as float at >= 95% of positions."""
    fm, qm = MixerModel(export_file("brief_1m_model")), MixerModel(quantized[mode])
    stories = read_stories(DATA / "valid.txt")[:40]
    hits = total = 0
    for story in stories:
        ids = np.frombuffer(b"\x01" + story, np.uint8).astype(np.int64)[:256]
        a, b = fm.prefill(ids)[0][0], qm.prefill(ids)[0][0]
        hits += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
    assert hits / total >= 0.95


def test_cli_report_is_consistent(export_file, tmp_path):
    src = export_file("brief_1m_model")
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(quantize_command, [str(src), "-o", str(out), "--text",
                                                   str(DATA / "valid.txt"), "--limit", "30", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    report = json.loads(rep.read_text())
    assert report["quant_bytes"] == out.stat().st_size and report["float_bytes"] == src.stat().st_size
    assert math.isclose(report["size_ratio"], report["quant_bytes"] / report["float_bytes"])
    stories = read_stories(DATA / "valid.txt")[:30]
    for key, path in (("float_bits_per_byte", src), ("quant_bits_per_byte", out)):
        direct = bits_per_byte(MixerModel(path), stories, DEFAULT_CONTEXT_MODE).bits_per_byte
        assert math.isclose(report[key], direct, rel_tol=1e-9)
    assert 0 <= report["mean_kl_nats"] < 0.05 and 0.95 <= report["top1_agreement"] <= 1
    assert report["tokens"] == sum(len(s) + 1 for s in stories)
    for word in ("bits/byte", "KL", "top-1", "greedy"):
        assert word in result.output


def test_refuses_bad_inputs(export_file, quantized, tmp_path):
    runner = CliRunner()
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(tmp_path / "plain.onnx"))
    cases = [([str(tmp_path / "plain.onnx")], "not a MicroMixer export"),
             ([str(quantized["dynamic"])], "already quantized"),
             ([str(export_file("brief_1m_model")), "--mode", "int4"], "int4"),  # a scheme no longer written
             ([str(export_file("brief_1m_model")), "--keep-float", "all"], "all")]
    for args, message in cases:
        out = tmp_path / "out.onnx"
        result = runner.invoke(quantize_command, [*args, "-o", str(out)], standalone_mode=False,
                               catch_exceptions=True)
        assert result.exception is not None and message in str(result.exception), (args, result.output)
        assert not out.exists()


@pytest.mark.parametrize("mode", MODES)
def test_selftest_vector_holds_for_every_scheme(quantized, mode):
    """Each quantized file carries its own greedy bytes, and this machine reproduces them."""
    from micromixer_edge.runtime.selftest import run_selftest
    result = run_selftest(MixerModel(quantized[mode]))
    assert result.passed and result.expected == 64, result.line()
