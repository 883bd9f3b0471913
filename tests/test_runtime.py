"""The torch-free runner: golden greedy parity, sampling, streaming, context modes, refusals."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ATOL, ROOT, golden_greedy, golden_reference
from micromixer_edge.errors import FormatError
from micromixer_edge import format as fmt
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.context import CONTEXT_MODES, sequence_logits
from oracle import ContextOracle
from micromixer_edge.runtime.engine import GenerationStats
from micromixer_edge.runtime.generate import generate, generate_batch
from micromixer_edge.runtime.textstream import TextStream

GREEDY_WINDOW = dict(temperature=0, ignore_eos=True, context="window")


@pytest.mark.parametrize("size", ["100k", "1m"])
def test_brief_greedy_matches_original(export_file, size):
    """Trained weights, original generate(temperature=0); the 100k run crosses the 64-token window."""
    model = MixerModel(export_file(f"brief_{size}_model"))
    golden = golden_greedy(size)
    for c in golden["continuations"]:
        stats = GenerationStats()
        text = generate(model, c["prompt"], GenerateOptions.of(max_new_tokens=golden["max_new_tokens"],
                                                          **GREEDY_WINDOW), stats)
        assert stats.ids == c["new_ids"]
        assert text == c["new_text"]
    if size == "100k":
        assert len(c["prompt_ids"]) + golden["max_new_tokens"] > fmt.SIZES[size].max_seq_len


@pytest.mark.parametrize("size", ["100k", "1m"])
def test_random_weight_greedy_matches_original(export_file, size):
    """Random weights emit special ids, which the sampler bans: drive the context with raw argmax."""
    model = MixerModel(export_file(f"{size}_model"))
    ref = golden_reference(size)
    for i in range(4):
        prompt, want = ref[f"prompt{i}"], ref[f"greedy{i}"]
        ctx = ContextOracle(model, "window")
        ids = list(prompt)
        logits = ctx.feed(prompt)[-1]
        while len(ids) < len(want):
            ids.append(int(np.argmax(logits)))
            logits = ctx.feed([ids[-1]])[0]
        assert ids == want.tolist()


def test_seeded_sampling_is_reproducible(export_file):
    model = MixerModel(export_file("brief_1m_model"))
    runs = [generate(model, "The", GenerateOptions.of(max_new_tokens=60, seed=seed, temperature=1.0))
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_context_modes_past_the_window(export_file, mode):
    """Below W every mode is the plain model; past W, window equals the golden long logits."""
    model = MixerModel(export_file("100k_model"))
    ref = golden_reference("100k")
    W = model.max_seq_len
    ctx = ContextOracle(model, mode)
    logits = ctx.feed(ref["long_ids"])
    whole, _ = model.prefill(ref["long_ids"][:W])
    np.testing.assert_allclose(logits[:W], whole[0], atol=ATOL, rtol=1e-5)
    if mode == "window":  # the original's output for the last W tokens is its last row
        np.testing.assert_allclose(logits[-1], ref["long_logits"][-1], atol=ATOL, rtol=1e-5)
    position = int(ctx.state.position[0])
    assert position == len(ref["long_ids"]) if mode == "unbounded" else position <= W


def test_sequence_logits_match_the_modes_definition(export_file):
    """Scoring's few-calls path (runtime/context.py) == the modes fed token by token."""
    model = MixerModel(export_file("100k_model"))
    ids = golden_reference("100k")["long_ids"]
    for mode in CONTEXT_MODES:
        seq = sequence_logits(model, ids, mode)
        steps = ContextOracle(model, mode).feed(ids)
        np.testing.assert_allclose(steps, seq, atol=ATOL, rtol=1e-5, err_msg=mode)


def test_batch_rows_equal_single_runs(export_file):
    model = MixerModel(export_file("brief_100k_model"))
    prompts = ["Once upon a time", "The cat", "Hello, my name is Tom and"]
    options = GenerateOptions.of(max_new_tokens=90, temperature=0, ignore_eos=True)
    assert generate_batch(model, prompts, options) == [generate(model, p, options) for p in prompts]


@pytest.mark.fast
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=8))
def test_textstream_equals_whole_decoding(data, cuts):
    stream, out, last = TextStream(), [], 0
    for cut in sorted(cuts) + [len(data)]:
        out.append(stream.push(data[last:cut]))
        last = max(last, cut)
    out.append(stream.finish())
    assert "".join(out) == data.decode("utf-8", errors="replace")


@pytest.mark.fast
def test_textstream_never_splits_a_character():
    stream = TextStream()
    pieces = [stream.push(bytes([b])) for b in "añ🙂".encode()] + [stream.finish()]
    assert [p for p in pieces if p] == ["a", "ñ", "🙂"]


@pytest.mark.fast
def test_stop_strings_are_held_back_and_cut():
    stream = TextStream(("END", "xx"))
    pieces = [stream.push(c.encode()) for c in "abEN" "cdENxEND tail"]
    assert "".join(pieces) == "abENcdENx" and stream.stopped


def _retag(src, dst, meta):
    model = onnx.load(str(src))
    del model.metadata_props[:]
    if meta is not None:
        model.metadata_props.add(key="micromixer", value=json.dumps(meta))
    onnx.save(model, str(dst))


def test_refuses_files_without_metadata_or_unknown_version(export_file, tmp_path):
    src = export_file("100k_model")
    _retag(src, tmp_path / "plain.onnx", None)
    with pytest.raises(FormatError, match="not a MicroMixer export"):
        MixerModel(tmp_path / "plain.onnx")
    meta = json.loads(onnx.load(str(src)).metadata_props[0].value)
    _retag(src, tmp_path / "v99.onnx", {**meta, "format_version": 99})
    with pytest.raises(FormatError, match="format_version 99 is not supported"):
        MixerModel(tmp_path / "v99.onnx")


def test_runs_without_torch(export_file, tmp_path):
    """A subprocess in which `import torch` fails still generates text through the CLI."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from micromixer_edge.runtime.cli import main
        sys.argv = ["mixer-run", {str(export_file("brief_100k_model"))!r}, "-p", "Once upon a time",
                    "-n", "40", "--temperature", "0"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == golden_greedy("100k")["continuations"][0]["new_text"][:40] + "\n"


def _pty_session(cmd, script, timeout=60):
    """Run cmd on a pseudo-terminal; `script` is (text to wait for, keys to send) steps. Returns
    everything the terminal showed and the exit status."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # (a test run in the background inherits it ignored)
        os.execvp(cmd[0], cmd)
    seen, end, start = b"", time.monotonic() + timeout, 0
    try:
        for want, keys in script:  # each `want` (text, or a regex) is looked for after the previous one
            pattern = re.compile(want.pattern.encode() if isinstance(want, re.Pattern) else re.escape(want.encode()))
            while not pattern.search(seen, start) and time.monotonic() < end:
                if select.select([fd], [], [], 0.1)[0]:
                    seen += os.read(fd, 65536)
            found = pattern.search(seen, start)
            assert found, (want, seen.decode(errors="replace")[-800:])
            start = found.end()
            os.write(fd, keys.encode())
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
    finally:
        for _ in range(100):  # (a failed step leaves it waiting for input: it is killed, never waited for)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    return seen.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_interactive_mode_on_a_terminal(export_file):
    """Ctrl-C stops the story being written and the session goes on; an empty line goes on with
    the last story from its last words; after a story ended, an empty line says so; Ctrl-D quits
    with a newline and status 0."""
    model = str(export_file("brief_100k_model"))
    cmd = [sys.executable, "-m", "micromixer_edge.runtime.cli", model, "-n", "100000", "--ignore-eos"]
    shown, code = _pty_session(cmd, [
        ("Ctrl-D quits", "Once upon a time\r"),   # a story that runs on (no end-of-story)
        (re.compile(r"Once upon a time[^\r\n>]{40}"), "\x03"),  # Ctrl-C while it is written
        ("[stopped]", ""), ("> ", "\r"),          # an empty line goes on with it
        (re.compile(r"\.\.\.[^\r\n>]{40}"), "\x03"), ("[stopped]", ""), ("> ", "\x04")])  # Ctrl-D
    assert code == 0, shown[-500:]
    assert shown.count("[stopped]") == 2 and shown.endswith("\n") and "Traceback" not in shown
    ended = [sys.executable, "-m", "micromixer_edge.runtime.cli", model, "-n", "5", "--logit-bias", "2:100"]
    shown, code = _pty_session(ended, [("Ctrl-D quits", "Lily\r"), ("[the end]", ""), ("> ", "\r"),
                                       ("that story ended", "\x04")])
    assert code == 0
