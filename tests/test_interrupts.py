"""Ctrl-C (SIGINT) during export, quantization or generation: exit 130, no temporary or partial
file left behind, and what was already printed stays printed."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import GOLDEN

ENTRY = {"export": "from micromixer_edge.export.cli import main; main()",
         "quantize": "from micromixer_edge.quantize.cli import main; main()",
         "run": "from micromixer_edge.runtime.cli import main; main()"}


def _interrupt_when(proc, ready, timeout=120):
    """Send SIGINT once ready() holds (or at the timeout); return (code, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_interrupted_writer_leaves_nothing(export_file, tmp_path, command):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = (["-c", str(GOLDEN / "brief_1m_model.pt")] if command == "export" else
            [str(export_file("brief_1m_model"))])
    proc = subprocess.Popen([sys.executable, "-c", ENTRY[command], *args, "-o", str(out_dir / "m.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # interrupt while the output's temporary file exists: the worst moment
    code, _, err = _interrupt_when(proc, lambda: any(out_dir.iterdir()))
    assert code == 130, err.decode()
    assert b"Traceback" not in err
    assert list(out_dir.iterdir()) == []


def test_interrupted_generation_keeps_its_output(export_file):
    proc = subprocess.Popen([sys.executable, "-c", ENTRY["run"], str(export_file("brief_100k_model")),
                             "-p", "Once upon a time", "-n", "10000000", "--ignore-eos", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(proc.stdout.fileno(), False)
    seen = bytearray()

    def printed_some():
        seen.extend(proc.stdout.read() or b"")
        return len(seen) > 200
    code, out, err = _interrupt_when(proc, printed_some)
    assert code == 130, err.decode()
    assert b"Traceback" not in err
    assert len(seen + (out or b"")) > 200
