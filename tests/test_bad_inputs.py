"""A table of bad inputs across the commands: one short line on stderr, non-zero exit, no traceback,
no output file created, and an existing output file left untouched."""
import json
import os
import subprocess
import sys

import onnx
import pytest

torch = pytest.importorskip("torch")  # the export extra; the fast tier runs without it

from conftest import GOLDEN

ENTRY = {  # command -> python -c code that runs its click entry point
    "export": "from micromixer_edge.export.cli import main; main()",
    "train": "from micromixer_edge.export.cli import train_main; train_main()",
    "run": "from micromixer_edge.runtime.cli import main; main()",
    "eval": "from micromixer_edge.runtime.cli import eval_main; eval_main()",
    "quantize": "from micromixer_edge.quantize.cli import main; main()",
    "bench": "from micromixer_edge.bench.cli import main; main()",
}


@pytest.fixture(scope="module")
def files(export_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = export_file("brief_100k_model")
    model = onnx.load(str(good))
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(os.urandom(4096))
    (d / "truncated.onnx").write_bytes(good.read_bytes()[:5000])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])), str(d / "other.onnx"))
    meta = json.loads(model.metadata_props[0].value)
    model.metadata_props[0].value = json.dumps({**meta, "format_version": 7})
    onnx.save(model, str(d / "v7.onnx"))
    # a MicroMixer export whose embedding lives outside the model's own directory
    ext = onnx.load(str(good))
    emb = next(t for t in ext.graph.initializer if len(t.dims) == 2)
    (d / "emb.bin").write_bytes(emb.raw_data)
    emb.ClearField("raw_data")
    emb.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../emb.bin"), ("offset", "0"), ("length", str((d / "emb.bin").stat().st_size))):
        emb.external_data.add(key=key, value=value)
    (d / "ext").mkdir()
    (d / "ext" / "m.onnx").write_bytes(ext.SerializeToString())
    sd = torch.load(GOLDEN / "100k_model.pt", weights_only=True)
    torch.save({k: v for k, v in sd.items() if k != "layer_norm.bias"}, d / "missing_key.pt")
    torch.save({**sd, "extra.weight": torch.zeros(2)}, d / "extra_key.pt")
    torch.save({**sd, "layer_norm.weight": torch.zeros(3)}, d / "bad_shape.pt")
    (d / "notes.pt").write_text("not a checkpoint")
    (d / "empty.pt").write_bytes(b"")
    (d / "story.txt").write_text("Once upon a time.\n\nThe end.\n")
    (d / "dir").mkdir()
    _snapshots(d, good, export_file("brief_1m_model"))
    return {"dir": d, "good": good, "ckpt": GOLDEN / "100k_model.pt"}


def _snapshots(d, good, other):
    """A good snapshot of `good`, and broken ones: truncated, one byte flipped, a future version,
    another model's, not a snapshot at all."""
    import struct
    import zlib
    from micromixer_edge.runtime.engine import Engine, GenerateOptions
    from micromixer_edge.runtime.model import MixerModel
    for model, name in ((good, "state.bin"), (other, "other_state.bin")):
        engine = Engine(MixerModel(model))
        row = engine.add("Once", GenerateOptions.of(max_new_tokens=5, temperature=0))
        list(engine.run())
        (d / name).write_bytes(engine.snapshot(row))
    data = (d / "state.bin").read_bytes()
    (d / "truncated_state.bin").write_bytes(data[:len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (d / "corrupt_state.bin").write_bytes(bytes(flipped))
    body = data[:8] + struct.pack("<H", 99) + data[10:-4]
    (d / "v99_state.bin").write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _case(f, name):
    d = f["dir"]
    good, ckpt = str(f["good"]), str(f["ckpt"])
    out = str(d / "out.onnx")
    table = {
        "export missing checkpoint": ("export", ["-c", str(d / "absent.pt"), "-o", out], "no such file"),
        "export directory": ("export", ["-c", str(d / "dir"), "-o", out], "is a directory"),
        "export empty file": ("export", ["-c", str(d / "empty.pt"), "-o", out], "not a PyTorch checkpoint"),
        "export non-torch file": ("export", ["-c", str(d / "notes.pt"), "-o", out], "not a PyTorch checkpoint"),
        "export other size": ("export", ["--size", "1m", "-c", ckpt, "-o", out], "not 1m"),
        "export missing key": ("export", ["-c", str(d / "missing_key.pt"), "-o", out], "missing key layer_norm.bias"),
        "export extra key": ("export", ["-c", str(d / "extra_key.pt"), "-o", out], "unexpected key extra.weight"),
        "export mis-shaped key": ("export", ["-c", str(d / "bad_shape.pt"), "-o", out], "key layer_norm.weight"),
        "export output dir missing": ("export", ["-c", ckpt, "-o", str(d / "nope" / "m.onnx")], "does not exist"),
        "export output is input": ("export", ["-c", ckpt, "-o", ckpt], "is the input"),
        "quantize missing file": ("quantize", [str(d / "absent.onnx"), "-o", out], "no such file"),
        "quantize directory": ("quantize", [str(d / "dir"), "-o", out], "is a directory"),
        "quantize empty file": ("quantize", [str(d / "empty.onnx"), "-o", out], "not a MicroMixer export"),
        "quantize random bytes": ("quantize", [str(d / "random.onnx"), "-o", out], "not"),
        "quantize truncated": ("quantize", [str(d / "truncated.onnx"), "-o", out], "not"),
        "quantize non-MicroMixer": ("quantize", [str(d / "other.onnx"), "-o", out], "not a MicroMixer export"),
        "quantize unknown version": ("quantize", [str(d / "v7.onnx"), "-o", out], "format_version 7"),
        "quantize output is input": ("quantize", [good, "-o", good], "is the input"),
        "quantize output dir missing": ("quantize", [good, "-o", str(d / "nope" / "q.onnx")], "does not exist"),
        "quantize external data": ("quantize", [str(d / "ext" / "m.onnx"), "-o", out], "external data"),
        "run external data outside": ("run", [str(d / "ext" / "m.onnx"), "-p", "hi"], "escapes model directory"),
        "run missing file": ("run", [str(d / "absent.onnx"), "-p", "hi"], "no such file"),
        "run directory": ("run", [str(d / "dir"), "-p", "hi"], "is a directory"),
        "run random bytes": ("run", [str(d / "random.onnx"), "-p", "hi"], "not a loadable ONNX model"),
        "run truncated": ("run", [str(d / "truncated.onnx"), "-p", "hi"], "not a loadable ONNX model"),
        "run non-MicroMixer": ("run", [str(d / "other.onnx"), "-p", "hi"], "not a MicroMixer export"),
        "run unknown version": ("run", [str(d / "v7.onnx"), "-p", "hi"], "format_version 7"),
        "run temperature < 0": ("run", [good, "-p", "hi", "--temperature", "-1"], "temperature"),
        "run top-p > 1": ("run", [good, "-p", "hi", "--top-p", "1.5"], "top-p"),
        "run top-p = 0": ("run", [good, "-p", "hi", "--top-p", "0"], "top-p"),
        "run top-k < 0": ("run", [good, "-p", "hi", "--top-k", "-3"], "top-k"),
        "run threads < 1": ("run", [good, "-p", "hi", "--threads", "0"], "threads"),
        "run max new tokens < 0": ("run", [good, "-p", "hi", "-n", "-5"], "max new tokens"),
        "run unknown context": ("run", [good, "-p", "hi", "--context", "sliding"], "sliding"),
        "run empty prompt": ("run", [good, "-p", ""], "prompt is empty"),
        "run invalid utf-8 stdin": ("run", [good, "-p", "-"], "not valid UTF-8"),
        "run state of another model": ("run", [good, "--load-state", str(d / "other_state.bin")], "another model"),
        "run truncated state": ("run", [good, "--load-state", str(d / "truncated_state.bin")], "truncated or corrupt"),
        "run corrupt state": ("run", [good, "--load-state", str(d / "corrupt_state.bin")], "truncated or corrupt"),
        "run state version": ("run", [good, "--load-state", str(d / "v99_state.bin")], "version 99"),
        "run state not a snapshot": ("run", [good, "--load-state", str(d / "story.txt")], "not a MicroMixer state"),
        "run state missing": ("run", [good, "--load-state", str(d / "absent.bin")], "no such file"),
        "run save state dir missing": ("run", [good, "-p", "hi", "--save-state", str(d / "nope" / "s.bin")],
                                       "does not exist"),
        "eval missing text": ("eval", [good, "--text", str(d / "absent.txt")], "no such file"),
        "train missing text": ("train", ["--train", str(d / "absent.txt"), "-o", str(d / "t.pt")], "absent.txt"),
        "train output dir missing": ("train", ["--size", "100k", "--train", str(d / "story.txt"),
                                               "-o", str(d / "nope" / "t.pt")], "does not exist"),
        "bench missing file": ("bench", [str(d / "absent.onnx")], "absent.onnx"),
    }
    return table[name]


CASES = [
    "export missing checkpoint", "export directory", "export empty file", "export non-torch file",
    "export other size", "export missing key", "export extra key", "export mis-shaped key",
    "export output dir missing", "export output is input", "quantize missing file", "quantize directory",
    "quantize empty file", "quantize random bytes", "quantize truncated", "quantize non-MicroMixer",
    "quantize unknown version", "quantize output is input", "quantize external data",
    "run external data outside", "quantize output dir missing",
    "run missing file", "run directory", "run random bytes", "run truncated", "run non-MicroMixer",
    "run unknown version", "run temperature < 0", "run top-p > 1", "run top-p = 0", "run top-k < 0",
    "run threads < 1", "run max new tokens < 0", "run unknown context", "run empty prompt",
    "run invalid utf-8 stdin", "run state of another model", "run truncated state", "run corrupt state",
    "run state version", "run state not a snapshot", "run state missing", "run save state dir missing",
    "eval missing text", "train missing text", "train output dir missing",
    "bench missing file",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input(files, name):
    command, args, message = _case(files, name)
    d = files["dir"]
    sentinel = d / "out.onnx"
    sentinel.write_bytes(b"existing output")  # must survive untouched
    before = sorted(p.name for p in d.iterdir())
    stdin = b"\xff\xfe invalid" if "stdin" in name else b""
    proc = subprocess.run([sys.executable, "-c", ENTRY[command], *args], input=stdin,
                          capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, name
    assert "Traceback" not in err, err
    assert message in err, err
    assert len([line for line in err.splitlines() if line.strip()]) <= 3, err  # click usage: 3 lines
    assert sentinel.read_bytes() == b"existing output"
    assert sorted(p.name for p in d.iterdir()) == before  # nothing created, no temporary left
    assert len(err) < 400
