"""The fast tier's units (pytest -m fast: the runtime's dependencies, pytest and hypothesis; no
torch, no ../shared, no network): the byte codec, snapshots, the protobuf reader, the context-mode
objects and the server's request parsing, each against a truth of its own."""
import dataclasses
import json
import random

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper, numpy_helper

from micromixer_edge import format as fmt
from micromixer_edge.codec import encode_prompt, read_stories, utf8
from micromixer_edge.errors import BadRequest, MixerError, SnapshotError
from micromixer_edge.runtime import protobuf, snapshot
from micromixer_edge.runtime.context import CONTEXT_MODES, MODES, context_mode
from micromixer_edge.runtime.sampling import MIN_PENALTY, SamplingParams

pytestmark = pytest.mark.fast


# --- codec ---------------------------------------------------------------------------------------
@given(st.text())
def test_a_prompt_is_bos_then_its_utf8_or_a_one_line_error(text):
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        with pytest.raises(MixerError, match="lone surrogate"):
            encode_prompt(text)
        return
    assert encode_prompt(text) == [fmt.BOS_ID, *data] and utf8(text) == data


def test_stories_are_separated_by_blank_lines(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"One.\r\n\r\nTwo\nlines.\n\n\n\nThree.\n")
    assert read_stories(tmp_path / "t.txt") == [b"One.", b"Two\nlines.", b"Three."]
    (tmp_path / "empty.txt").write_bytes(b"\n\n")
    with pytest.raises(MixerError, match="no text"):
        read_stories(tmp_path / "empty.txt")


# --- snapshots -----------------------------------------------------------------------------------
def _snapshot(position=3, history=(), recent=(), counts=(), generator=(7, 2), layers=2, hidden=3, vocab=4, seed=0):
    values = np.random.default_rng(seed)
    return snapshot.Snapshot("ab" * 32, layers, hidden, "halve", position, list(history), list(recent), list(counts),
                             generator, values.normal(size=(layers, hidden)).astype(np.float32),
                             values.normal(size=vocab).astype(np.float32))


tokens = st.lists(st.integers(0, 255), max_size=300)
generators = st.one_of(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 65_536)),
                       st.integers(0, 2**32).map(lambda seed: (None, random.Random(seed).getstate())))


@settings(max_examples=50)
@given(position=st.integers(0, 10**9), history=tokens, recent=tokens, generator=generators,
       counts=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 10**6)), max_size=20),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 300), st.integers(1, 300)))
def test_a_snapshot_decodes_to_what_was_encoded(position, history, recent, generator, counts, shape):
    want = _snapshot(position, history, recent, counts, generator, *shape)
    got = snapshot.decode(snapshot.encode(want))
    for f in dataclasses.fields(want)[1:]:  # (the sha256 below)
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, f.name
    assert got.model_sha256 == want.model_sha256[:32]  # (the first 16 bytes)


@settings(max_examples=50)
@given(cut=st.integers(0, 200), flip=st.integers(0, 200))
def test_a_damaged_snapshot_is_a_snapshot_error(cut, flip):
    data = snapshot.encode(_snapshot())
    truncated = data[:cut % len(data)]
    flipped = bytearray(data)
    flipped[flip % len(data)] ^= 0x40
    for bad in (truncated, bytes(flipped)):
        with pytest.raises(SnapshotError):
            snapshot.decode(bad)


def test_unsafe_snapshots_are_refused_even_with_a_good_checksum():
    nan = _snapshot()
    nan.logits[0] = np.nan
    for bad, reason in ((nan, "not finite"), (_snapshot(generator=(1, 10**9)), "replay"),
                        (_snapshot(history=[1] * 9000), "out of range")):
        with pytest.raises(SnapshotError, match=reason):
            snapshot.decode(snapshot.encode(bad))


@settings(max_examples=50)
@given(data=st.binary(min_size=1, max_size=200), key=st.binary(min_size=1, max_size=40), flip=st.integers(0, 10**6))
def test_state_text_round_trips_and_a_signature_is_checked(data, key, flip):
    assert snapshot.from_text(snapshot.to_text(data)) == data
    signed = snapshot.to_text(data, key)
    assert snapshot.from_text(signed, key) == data
    altered = list(signed)
    at = flip % len(altered)
    altered[at] = "A" if altered[at] != "A" else "B"
    altered = "".join(altered)
    if altered != signed and "." in altered:
        with pytest.raises(SnapshotError):
            assert snapshot.from_text(altered, key) == data  # (an alteration that decodes the same: base64's spare bits)
    for bad in (snapshot.to_text(data), signed + "x!", signed.replace(".", "")):
        with pytest.raises(SnapshotError):
            snapshot.from_text(bad, key)
    with pytest.raises(SnapshotError, match="no --state-key-file"):
        snapshot.from_text(signed)


# --- the protobuf reader against the onnx package --------------------------------------------------
@settings(max_examples=20)
@given(values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=12),
       ints=st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=6), alpha=st.floats(-10, 10, width=32))
def test_the_protobuf_reader_reads_what_onnx_writes(values, ints, alpha):
    w = np.array(values, np.float32)
    graph = helper.make_graph(
        [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=alpha, name="act")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [len(values)])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [len(values)])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(ints, np.int64), "i")])
    proto = helper.make_model(graph)
    proto.metadata_props.add(key=fmt.METADATA_KEY, value=json.dumps({"a": 1}))
    model = protobuf.read_model(proto.SerializeToString())
    assert model["metadata"] == {fmt.METADATA_KEY: json.dumps({"a": 1})}
    assert model["inputs"] == ["x"] and model["outputs"] == ["y"]
    assert np.array_equal(model["initializers"]["w"], w) and model["initializers"]["i"].tolist() == ints
    node = model["nodes"][0]
    assert node["op"] == "LeakyRelu" and np.float32(node["attrs"]["alpha"]) == np.float32(alpha)


# --- context modes against a plain simulation ------------------------------------------------------
def _simulate(mode: str, W: int, position: int, n: int) -> int | None:
    """The README's definition, position by position: how many of the latest tokens the state
    holds after n more tokens, or None if it never restarted (it then holds all of them)."""
    held, restarted = position, False
    for _ in range(n):
        if mode == "window" and held >= W:
            held, restarted = W, True  # the last W, the new one included
        elif mode == "halve" and held >= W:
            held, restarted = W // 2 + 1, True  # the last W/2, then the new one
        else:
            held += 1
    return held if restarted else None


@settings(max_examples=300)
@given(mode=st.sampled_from(CONTEXT_MODES), W=st.sampled_from([2, 4, 64, 256]), data=st.data())
def test_a_modes_suffix_is_what_feeding_token_by_token_keeps(mode, W, data):
    position = data.draw(st.integers(0, W if mode != "unbounded" else 10 * W))
    n = data.draw(st.integers(0, 5 * W))
    assert context_mode(mode).suffix(position, n, W) == _simulate(mode, W, position, n)


def test_modes_by_name():
    assert {name: (m.boundary(256), m.keep(256)) for name, m in MODES.items()} == {
        "halve": (256, 128), "window": (256, 255), "unbounded": (float("inf"), 0)}
    with pytest.raises(MixerError, match="choose one of halve, window, unbounded"):
        context_mode("sliding")


# --- the server's request parsing ----------------------------------------------------------------
def _parse(body):
    from micromixer_edge.serve.fields import parse_completion
    from micromixer_edge.serve.settings import Settings
    return parse_completion(body if isinstance(body, bytes) else json.dumps(body).encode(), Settings(model="m"))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=300)
@given(body=st.dictionaries(st.sampled_from(["prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p",
                                             "repeat_penalty", "seed", "stop", "stream", "n", "echo", "context",
                                             "ignore_eos", "stream_options", "logit_bias", "logprobs"]),
                            json_values))
def test_a_request_parses_or_is_a_bad_request(body):
    """Whatever the fields hold: a request whose options are within the documented bounds, or a
    BadRequest naming its field; never another exception."""
    try:
        req = _parse(body)
    except BadRequest as e:
        assert e.status in (400, 413) and str(e)
        assert e.param is None or e.param in str(e)  # it names its field
        return
    p = req.options.sampling
    assert all(isinstance(p, (str, bytes)) for p in req.prompts) and 0 <= req.options.max_new_tokens <= 4096
    assert 0 <= p.temperature <= 2 and 0 < p.top_p <= 1 and 0 <= p.top_k <= 256 and 0 <= p.min_p <= 1
    assert MIN_PENALTY <= p.repetition_penalty <= SamplingParams.bound("repetition_penalty").served and req.options.context in CONTEXT_MODES
    assert req.options.logprobs is None or 0 <= req.options.logprobs <= 5
    assert req.options.prompt_logprobs == (req.echo and req.options.logprobs is not None)


def test_null_is_absent_and_defaults_are_the_documented_ones():
    req = _parse({"prompt": "x", "max_tokens": None, "temperature": None, "stop": None, "n": None, "echo": None})
    assert req.options.max_new_tokens == 16 and req.options.sampling.temperature == 0.8 and req.options.stop == ()


def test_a_mode_the_engine_cannot_run_is_refused():
    """The engine remembers a row's last W tokens: a mode must re-fold by W and keep fewer."""
    from micromixer_edge.runtime.context import ContextMode

    class TooLong(ContextMode):
        name = "too-long"

        def boundary(self, W):
            return 2 * W

        def keep(self, W):
            return W
    with pytest.raises(ValueError, match="boundary <= W"):
        TooLong().check(64)
    for mode in MODES.values():
        mode.check(64)


message = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "robot"]),
                                           "content": st.text() | st.lists(st.fixed_dictionaries(
                                               {"type": st.sampled_from(["text", "image_url"]), "text": st.text()}),
                                               max_size=3) | st.none()}),
                    json_values)


_template = None


@settings(max_examples=200)
@given(messages=st.lists(message, max_size=4) | json_values, extra=st.dictionaries(st.sampled_from(
    ["max_tokens", "max_completion_tokens", "stream", "temperature"]), json_values, max_size=2))
def test_a_chat_request_parses_or_is_a_bad_request(messages, extra):
    """The chat endpoint's parser: a prompt from the default template, or a BadRequest."""
    pytest.importorskip("jinja2")  # the serve extra's
    from micromixer_edge.serve.chat import ChatTemplate
    from micromixer_edge.serve.fields import parse_chat
    from micromixer_edge.serve.settings import Settings
    body = json.dumps({"messages": messages, **extra}).encode()
    global _template
    _template = _template or ChatTemplate()  # (one worker process for every example)
    try:
        req = parse_chat(body, Settings(model="m"), _template)
    except BadRequest as e:
        assert e.status in (400, 413) and str(e)
        return
    texts = [m["content"] if isinstance(m["content"], str) else "" if m["content"] is None  # (an assistant's null)
             else "".join(p["text"] for p in m["content"]) for m in messages]
    assert req.prompts == ("".join(t + "\n\n" for t in texts),)  # (each message, then a blank line)


@settings(max_examples=60, deadline=None)
@given(chat=st.booleans(), k=st.integers(0, 20), n=st.integers(1, 3), m=st.integers(0, 3000),
       text=st.binary(min_size=0, max_size=3000))
def test_the_answer_estimate_bounds_the_longest_answer(chat, k, n, m, text):
    """answer_bytes against the encoder itself, on the longest values an answer can hold: every
    byte a control byte or an invalid one (JSON's \\u00XX, U+FFFD), entries of non-ASCII bytes with
    the longest floats and distinct alternatives, a six-digit offset, the eos entry; whole (in
    pieces) and as the stream's chunks' logprobs."""
    from micromixer_edge.runtime.logprobs import Entry
    from micromixer_edge.serve.answer import CHAT, TEXT, answer_bytes, dumps, pieces
    shape, k = (CHAT, k) if chat else (TEXT, min(k, 5))
    body = (bytes(b % 32 for b in text) + text)[:m].decode("utf-8", "replace")  # (m bytes at most)
    worst = -1.2345678901234567e-300
    entries = [Entry(0x80 + i % 128, worst, tuple((0x80 + (i + j) % 128, worst) for j in range(k + 1)), 999_999)
               for i in range(m + 1)]  # m bytes and eos
    choice = shape.whole(0, body, "length", shape.logprobs(entries, k))
    doc = {"id": "chatcmpl-" + "f" * 24, "object": shape.whole_object, "created": 1_800_000_000,
           "model": "micromixer-1m-int8-quantized-for-a-board", "choices": [choice] * n,
           "usage": {"prompt_tokens": 99999, "completion_tokens": 99999, "total_tokens": 199998,
                     "prompt_tokens_details": {"cached_tokens": 99999}}}
    whole = "".join(pieces(doc))
    assert json.loads(whole) == json.loads(dumps(doc))
    assert len(whole.encode()) <= answer_bytes("chat" if chat else "text", [1], n, m, k, False, False)


def test_a_completion_without_a_prompt_says_it_is_required():
    pytest.importorskip("jinja2")  # (the serve extra's)
    from micromixer_edge.serve.fields import parse_completion
    from micromixer_edge.serve.settings import Settings
    with pytest.raises(BadRequest) as e:
        parse_completion(b'{"max_tokens": 5}', Settings(model="m"))
    assert str(e.value).startswith("prompt is required") and e.value.param == "prompt"
