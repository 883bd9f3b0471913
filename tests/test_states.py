"""Conversation states held by the client (issue 30): returned with each choice, resumed by any
server of the same model. Truths: one run uncut (the same bytes whatever the cut points), one
request whose prompt is the whole text so far, the same chat sent whole; and every mutation of a
state a 400 naming `state`, never a 5xx."""
import base64
import json
import random

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from micromixer_edge.runtime import snapshot  # noqa: E402
from micromixer_edge.runtime.context import CONTEXT_MODES  # noqa: E402
from micromixer_edge.runtime.engine import Engine, GenerateOptions  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402
from serving import Served, metric  # noqa: E402

SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODELS = {}


def _model(bundled, kind):
    if kind not in MODELS:
        MODELS[kind] = MixerModel(bundled[kind])
    return MODELS[kind]


def _post(server, body, path="/v1/completions"):
    return httpx.post(server.url + path, json=body, timeout=60)


def _text(doc) -> str:
    choice = doc["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


# --- the engine: resumed from a state = one run = the whole text as a prompt ----------------------
@pytest.mark.parametrize("kind", ["float", "int8"])
@pytest.mark.parametrize("mode", CONTEXT_MODES)
@SETTINGS
@given(cuts=st.lists(st.integers(1, 299), min_size=1, max_size=3, unique=True))
def test_greedy_from_a_state_is_one_run_and_the_whole_text_as_a_prompt(bundled, kind, mode, cuts):
    """300 greedy bytes (past W = 256, so bounded modes re-fold), cut at random points: each piece
    resumed from the last piece's state (text, bytes) equals the uncut run, and each piece equals
    a fresh request whose prompt is the whole text so far."""
    model, prompt = _model(bundled, kind), "Once upon a time"
    options = GenerateOptions.of(max_new_tokens=300, temperature=0, context=mode, ignore_eos=True)
    whole = _generate(Engine(model), prompt, options)
    state, text, at = None, "", 0
    for end in sorted(cuts) + [300]:
        opts = GenerateOptions.of(max_new_tokens=end - at, temperature=0, context=mode, ignore_eos=True)
        engine = Engine(model)
        row = engine.add(prompt, opts) if state is None else engine.restore(state, opts)
        piece = "".join(p for _, p in engine.run())
        if state is not None:  # the whole text so far as one prompt
            assert _generate(Engine(model), prompt + text, opts) == piece
        state, text, at = engine.snapshot(row), text + piece, end
    assert text == whole


def _generate(engine, prompt, options):
    engine.add(prompt, options)
    return "".join(p for _, p in engine.run())


# --- the server -----------------------------------------------------------------------------------
@SETTINGS
@given(cuts=st.lists(st.integers(1, 199), min_size=1, max_size=4, unique=True), seed=st.integers(0, 2**31))
def test_a_seeded_stream_cut_into_pieces_is_the_uncut_stream(server, bundled, cuts, seed):
    """Each next request: the last state, an empty prompt, no seed (the state's generator goes
    on); the pieces joined are the uncut stream's bytes. A seed re-seeds."""
    body = {"prompt": "Lily and Ben", "temperature": 0.8, "ignore_eos": True}
    whole = _text(_post(server, {**body, "max_tokens": 200, "seed": seed}).json())
    state, text, at = None, "", 0
    for end in sorted(cuts) + [200]:
        ask = {**body, "max_tokens": end - at, "return_state": True}
        ask.update({"seed": seed} if state is None else {"prompt": "", "state": state})
        doc = _post(server, ask).json()
        state, text, at = doc["choices"][0]["state"], text + _text(doc), end
    assert text == whole
    goes_on = _text(_post(server, {**body, "prompt": "", "state": state, "max_tokens": 30}).json())
    reseeded = _text(_post(server, {**body, "prompt": "", "state": state, "seed": 5, "max_tokens": 30}).json())
    assert reseeded != goes_on  # (a seed starts the generator afresh; without one it goes on)
    engine = Engine(_model(bundled, "int8"))
    row = engine.restore(snapshot.from_text(state), GenerateOptions.of(max_new_tokens=30, seed=5, ignore_eos=True),
                         reseed=True)
    assert reseeded == "".join(p for r, p in engine.run() if r is row)


def test_the_state_comes_in_the_whole_answer_and_the_last_chunk_and_forks(server):
    body = {"prompt": "Tom had a", "max_tokens": 30, "seed": 2, "return_state": True}
    whole = _post(server, body).json()["choices"][0]
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        docs = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    with_state = [d for d in docs if d["choices"] and "state" in d["choices"][0]]
    assert len(with_state) == 1 and with_state[0] is docs[-1] and with_state[0]["choices"][0]["finish_reason"]
    assert snapshot.from_text(with_state[0]["choices"][0]["state"]) == snapshot.from_text(whole["state"])
    n = _post(server, {"prompt": " and", "state": whole["state"], "n": 3, "seed": 9, "max_tokens": 20}).json()
    alone = [_text(_post(server, {"prompt": " and", "state": whole["state"], "seed": 9 + i, "max_tokens": 20}).json())
             for i in range(3)]
    assert [c["text"] for c in n["choices"]] == alone


def test_a_states_context_mode_wins(server):
    state = _post(server, {"prompt": "Once", "max_tokens": 5, "context": "window", "return_state": True}).json()
    state = state["choices"][0]["state"]
    r = _post(server, {"prompt": "", "state": state, "max_tokens": 5, "context": "halve"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "context"
    assert _post(server, {"prompt": "", "state": state, "max_tokens": 5, "context": "window"}).status_code == 200


def test_a_chat_carried_by_states_is_the_chat_sent_whole(server):
    turns = ["Lily had a cat.", "What did the cat do?", "And then?"]
    history, state = [], None
    for turn in turns:
        ask = {"messages": [{"role": "user", "content": turn}], "max_tokens": 40, "temperature": 0,
               "return_state": True}
        carried = _post(server, {**ask, "state": state} if state else ask, "/v1/chat/completions").json()
        history.append({"role": "user", "content": turn})
        whole = _post(server, {"messages": history, "max_tokens": 40, "temperature": 0}, "/v1/chat/completions").json()
        assert _text(carried) == _text(whole)
        history.append({"role": "assistant", "content": _text(whole)})
        state = carried["choices"][0]["state"]


def _mutations(data: bytes):
    text = snapshot.to_text(data)
    return st.one_of(
        st.integers(0, len(text) - 1).map(lambda i: text[:i]),  # truncated
        st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)).map(  # a bit flipped
            lambda p: snapshot.to_text(data[:p[0]] + bytes([data[p[0]] ^ (1 << p[1])]) + data[p[0] + 1:])),
        st.text(max_size=50),  # anything
        st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")))


def test_states_are_data_checked_before_use(server, bundled):
    data = snapshot.from_text(_post(server, {"prompt": "Once", "max_tokens": 10, "return_state": True}).json()
                              ["choices"][0]["state"])
    before = metric(server.url, 'mixer_states_total{event="refused"}')

    @settings(max_examples=60, deadline=None)
    @given(state=_mutations(data))
    def one(state):
        r = _post(server, {"prompt": "", "max_tokens": 5, "state": state})
        assert r.status_code in (200, 400), r.text  # (200: a flip that leaves a valid state, e.g. a logit's low bit)
        if r.status_code == 400:
            assert r.json()["error"]["param"] == "state" and r.json()["error"]["message"].startswith("state")
    one()
    s = snapshot.decode(data)
    nan = snapshot.Snapshot(**{**s.__dict__, "logits": np.full_like(s.logits, np.nan)})
    engine = Engine(_model(bundled, "float"))
    other = engine.snapshot(engine.add("Once", GenerateOptions.of(max_new_tokens=0)))
    for bad, reason in ((snapshot.encode(nan), "not finite"), (other, "another model"),
                        (b"x" * 400_000, "at most")):
        r = _post(server, {"prompt": "", "max_tokens": 5, "state": snapshot.to_text(bad)})
        assert r.status_code == 400 and reason in r.json()["error"]["message"], r.text
    assert metric(server.url, 'mixer_states_total{event="refused"}') > before
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def _v1(header: dict, arrays: dict) -> bytes:
    """A version 1 snapshot (a JSON header) with a valid crc32, as a crafter could make one."""
    import struct
    import zlib
    text = json.dumps({**header, "arrays": [[k, list(v.shape)] for k, v in arrays.items()]}).encode()
    body = struct.pack("<8sHI", b"MIXSTATE", 1, len(text)) + text + b"".join(v.astype("<f4").tobytes() for v in arrays.values())
    return body + struct.pack("<I", zlib.crc32(body))


def test_crafted_states_with_a_good_checksum_are_400s(server):
    good = snapshot.decode(snapshot.from_text(_post(server, {"prompt": "Once", "max_tokens": 5, "return_state": True})
                                              .json()["choices"][0]["state"]))
    words = list(random.Random(1).getstate()[1])
    bad_twister = snapshot.Snapshot(**{**good.__dict__, "generator": (None, (3, tuple(words[:-1] + [1000]), None))})
    header = {"model_sha256": 5, "num_layers": 3, "hidden_dim": 224, "context": "halve", "position": 1,
              "history": [], "recent": [], "rng": [3, words, None]}
    arrays = {"sums": good.sums, "logits": good.logits}
    short = snapshot.Snapshot(**{**good.__dict__, "position": 300})  # (its history: 6 bytes)
    for data in (snapshot.encode(bad_twister), _v1(header, arrays), _v1({**header, "position": float("inf")}, arrays),
                 snapshot.encode(short)):
        r = _post(server, {"prompt": "", "max_tokens": 5, "state": snapshot.to_text(data)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "state", r.text


def test_a_state_is_4_kb_of_bytes_under_8_kb_of_text(server):
    state = _post(server, {"prompt": "Once upon a time", "max_tokens": 600, "ignore_eos": True,
                           "presence_penalty": 0.5, "return_state": True}).json()["choices"][0]["state"]
    size = len(snapshot.from_text(state))
    print(f"a state of the 1m model: {size} bytes, {len(state)} characters of base64url")
    assert size < 4500 and len(state) < 8192


def test_signed_states(bundled, tmp_path):
    """--state-key-file: states come signed; unsigned, altered or another key's are refused."""
    (tmp_path / "key").write_text("k" * 32 + "\n")
    (tmp_path / "other").write_text("o" * 32 + "\n")
    a, b = Served(bundled["int8"], "--state-key-file", str(tmp_path / "key")), Served(bundled["int8"])
    c = Served(bundled["int8"], "--state-key-file", str(tmp_path / "other"))
    try:
        signed = _post(a, {"prompt": "Once", "max_tokens": 10, "return_state": True}).json()["choices"][0]["state"]
        unsigned = _post(b, {"prompt": "Once", "max_tokens": 10, "return_state": True}).json()["choices"][0]["state"]
        assert "." in signed and "." not in unsigned
        assert _post(a, {"prompt": "", "max_tokens": 5, "state": signed}).status_code == 200
        body, tag = signed.split(".")
        flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:] + "." + tag
        for bad, reason, server in ((unsigned, "not signed", a), (flipped, "does not match", a),
                                    (signed, "does not match", c), (signed, "no --state-key-file", b)):
            r = _post(server, {"prompt": "", "max_tokens": 5, "state": bad})
            assert r.status_code == 400 and reason in r.json()["error"]["message"], r.text
        # a completions state (the template's system prompt not folded in) cannot go on as a chat
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
        r = _post(a, {**chat, "state": signed}, "/v1/chat/completions")
        assert r.status_code == 400 and "another endpoint" in r.json()["error"]["message"]
        chat_state = _post(a, {**chat, "return_state": True}, "/v1/chat/completions").json()["choices"][0]["state"]
        assert _post(a, {**chat, "state": chat_state}, "/v1/chat/completions").status_code == 200
    finally:
        for s in (a, b, c):
            assert s.stop() == 0


def test_a_template_that_is_not_prefix_stable_refuses_states(bundled, tmp_path):
    (tmp_path / "old.jinja").write_text("{% for m in messages %}{{ m.content }}{% if not loop.last %}"
                                        "{{ '\\n\\n' }}{% endif %}{% endfor %}")  # (the default before)
    s = Served(bundled["int8"], "--chat-template", str(tmp_path / "old.jinja"))
    try:
        ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10, "return_state": True}
        state = _post(s, ask, "/v1/chat/completions").json()["choices"][0]["state"]
        r = _post(s, {**ask, "state": state}, "/v1/chat/completions")
        assert r.status_code == 400 and r.json()["error"]["param"] == "state" and "prefix-stable" in r.text
        assert _post(s, {"prompt": "", "state": state, "max_tokens": 5}).status_code == 200  # completions: fine
    finally:
        assert s.stop() == 0
