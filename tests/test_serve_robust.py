"""mixer-serve against what the world sends (issue 19): faults injected into one row, into a step
and into the loop itself; a hypothesis fuzz of the HTTP API; slow sockets; clients that give up;
/metrics against /health; shutdown mid-stream. Every server is started here on 127.0.0.1 with an
ephemeral port, bounded in time, and stopped."""
import concurrent.futures
import json
import os
import re
import signal
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")  # the test extra; the fast tier runs without it
from hypothesis import HealthCheck, given, settings, strategies as st

from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.generate import generate
from micromixer_edge.runtime.model import MixerModel

pytest.importorskip("starlette")
from serving import Served, health, metric, rss_mb, sse, wait_idle  # noqa: E402

HERE = os.path.dirname(__file__)
PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named", "Tom had a big red"]


@pytest.fixture(scope="module")
def server(bundled):
    s = Served(bundled["int8"], "--max-tokens-limit", "64", "--timeout-seconds", "1")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def faulty(bundled):
    s = Served(bundled["int8"], entry=(os.path.join(HERE, "faulty_serve.py"),))
    yield s
    s.stop()


# --- one row's failure is that row's alone -----------------------------------------------------
def test_a_failing_row_ends_alone_and_the_others_run_on(faulty, bundled):
    """Eight streams; one fails while it is prepared, one in its own draw mid-stream: each of
    those gets a JSON error, and the other six get exactly the bytes they make alone."""
    model = MixerModel(bundled["int8"])
    jobs = [{"prompt": p, "max_tokens": 120, "seed": 10 + i, "stream": True} for i, p in enumerate(PROMPTS)]
    jobs += [{"prompt": "FAIL-PREPARE me", "max_tokens": 50, "stream": True},
             {"prompt": "Lily and Ben", "max_tokens": 120, "seed": 666, "stream": True, "ignore_eos": True},
             {"prompt": "The sun was", "max_tokens": 120, "seed": 3, "stream": True}]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda b: sse(faulty.url, b), jobs))
    for body, (text, last) in zip(jobs, results):
        if body["prompt"].startswith("FAIL") or body.get("seed") == 666:
            assert last["error"]["type"] == "server_error" and "injected" in last["error"]["message"], last
        else:
            want = generate(model, body["prompt"], GenerateOptions.of(max_new_tokens=120, seed=body["seed"]))
            assert text == want and last["choices"][0]["finish_reason"] in ("stop", "length")
    plain = httpx.post(faulty.url + "/v1/completions", json={"prompt": "FAIL-PREPARE", "max_tokens": 5}, timeout=30)
    assert plain.status_code == 500 and "injected" in plain.json()["error"]["message"]
    assert wait_idle(faulty.url)["active_rows"] == 0 and faulty.proc.poll() is None


def test_a_row_whose_refold_fails_ends_alone(faulty, bundled):
    """window mode past W re-folds every step: one row's re-fold fails mid-stream, on a step where
    another row makes text and a third finishes; they are not disturbed."""
    model, long = MixerModel(bundled["int8"]), "Once upon a time, " * 16  # 288 bytes > W = 256
    jobs = [{"prompt": long, "max_tokens": 60, "seed": 777, "context": "window", "stream": True},
            {"prompt": long, "max_tokens": 60, "seed": 4, "context": "window", "stream": True},
            {"prompt": "Lily and Ben", "max_tokens": 1, "seed": 5, "stream": True}]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda b: sse(faulty.url, b), jobs))
    assert "injected: this row's re-fold failed" in results[0][1]["error"]["message"]
    for body, (text, last) in zip(jobs[1:], results[1:]):
        opts = GenerateOptions.of(max_new_tokens=body["max_tokens"], seed=body["seed"],
                                  context=body.get("context", "halve"))
        assert text == generate(model, body["prompt"], opts) and last["choices"][0]["finish_reason"] in ("stop",
                                                                                                         "length")
    assert wait_idle(faulty.url)["active_rows"] == 0 and faulty.proc.poll() is None


def test_a_failing_step_ends_its_rows_and_the_server_serves_on(faulty, bundled):
    text, last = sse(faulty.url, {"prompt": "FAIL-STEP", "max_tokens": 50, "stream": True})
    assert "injected: the shared step failed" in last["error"]["message"]
    model = MixerModel(bundled["int8"])
    after = faulty.client.completions.create(model="m", prompt="Once upon a time", max_tokens=40, seed=5)
    assert after.choices[0].text == generate(model, "Once upon a time", GenerateOptions.of(max_new_tokens=40, seed=5))
    assert health(faulty.url)["status"] == "ok"


def test_a_failed_shared_step_keeps_the_rows_that_finished_in_it(bundled, monkeypatch):
    from micromixer_edge.runtime.engine import Engine
    engine = Engine(MixerModel(bundled["int8"]))
    ending = engine.add("Once", GenerateOptions.of(max_new_tokens=1, seed=1))
    going = engine.add("Lily", GenerateOptions.of(max_new_tokens=50, seed=2))

    def broken(self):
        raise RuntimeError("injected")
    monkeypatch.setattr(Engine, "_feed", broken)
    touched = engine.step()
    assert sorted(r.id for r in touched) == sorted([ending.id, going.id])  # each once
    assert ending.finish_reason == "length" and going.finish_reason == "error" and "injected" in going.error
    assert engine.rows == []


def test_a_dead_loop_says_503_and_the_process_exits_non_zero(bundled):
    s = Served(bundled["int8"], entry=(os.path.join(HERE, "faulty_serve.py"),))
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "KILL-LOOP", "max_tokens": 50}, timeout=30)
        assert r.status_code == 500 and "decode loop died" in r.json()["error"]["message"]
        later = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi"}, timeout=30)
        assert later.status_code == 503 and later.json()["error"]["message"]
        assert s.proc.wait(15) == 1  # a supervisor (systemd Restart=on-failure) restarts it
        assert "decode loop died" in s.proc.stderr.read()
    finally:
        s.stop()


def test_health_is_503_while_the_loop_is_dead(bundled):
    """The moment between the loop's death and the process's exit: /health must not say ok."""
    from starlette.testclient import TestClient
    from micromixer_edge.serve.app import create_app
    from micromixer_edge.serve.settings import Settings
    deaths = []
    app = create_app(Settings(model=str(bundled["int8"])), on_death=lambda: deaths.append(1))
    loop = app.state.server.loop

    def broken():
        raise SystemError("injected")
    loop._serve = broken  # the thread dies as it starts
    with TestClient(app) as client:
        loop._thread.join(5)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "injected" in r.json()["error"]
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 503 and deaths == [1]


# --- fuzz: whatever arrives, a 2xx or a JSON 4xx --------------------------------------------------
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop",
          "stream", "ignore_eos", "context", "n", "stream_options", "model", "logprobs", "echo", "logit_bias",
          "presence_penalty", "frequency_penalty", "best_of", "suffix", "user", "tools", "response_format",
          "top_logprobs", "max_completion_tokens"]
unicode = st.text(st.characters(codec=None, categories=None), max_size=20)  # lone surrogates, NUL, anything
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 16, 64, 65, -1])
           | st.floats(allow_nan=True, allow_infinity=True) | unicode
           | st.sampled_from(["halve", "window", "unbounded", "", "\x00", "\ud800", "a\udfffb"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(unicode, inner, max_size=4), max_leaves=10)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8).map(lambda d: {"prompt": "Hi", **d}
                                                                           if len(d) % 3 else d)
# bodies that are mostly valid, so that odd but allowed values reach the decode loop: NUL and
# surrogates in prompts and stop strings, huge seeds, streams with usage, every context mode
likely = {"prompt": unicode, "max_tokens": st.integers(0, 64), "temperature": st.floats(0, 2),
          "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 256), "min_p": st.floats(0, 1),
          "repeat_penalty": st.floats(0.01, 10), "seed": st.integers(-2**63, 2**63 - 1),
          "stop": unicode | st.lists(unicode, max_size=5), "stream": st.booleans(),
          "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.none() | st.booleans()}),
          "ignore_eos": st.booleans(), "context": st.sampled_from(["halve", "window", "unbounded"]),
          "n": st.integers(1, 2), "echo": st.booleans(), "logprobs": st.integers(0, 5),
          "presence_penalty": st.floats(-2, 2), "logit_bias": st.dictionaries(st.integers(0, 255).map(str),
                                                                               st.floats(-100, 100), max_size=3)}
valid_ish = st.fixed_dictionaries({"prompt": unicode}, optional={k: st.none() | v for k, v in likely.items()
                                                                 if k != "prompt"})


def _encode(doc) -> bytes:
    """JSON as a client may write it: lone surrogates as \\u escapes, NaN and Infinity as Python
    writes them (not JSON, but what some clients send)."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()


def _check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["message"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_fuzz_the_completions_api_then_it_answers_and_holds_no_rows(server):
    """Hundreds of arbitrary bodies: every answer a 2xx or a JSON 4xx, never a 5xx; then a normal
    request is answered and no row is left behind."""
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=valid_ish | bodies | st.binary(max_size=200) | st.builds(_encode, values))
    def one(body):
        content = body if isinstance(body, bytes) else _encode(body)
        _check_answer(httpx.post(server.url + "/v1/completions", content=content, timeout=30,
                                 headers={"Content-Type": "application/json"}))
    one()
    ok = server.client.completions.create(model="m", prompt="Once upon a time", max_tokens=20, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")
    h = wait_idle(server.url)
    assert (h["status"], h["active_rows"], h["queued_requests"]) == ("ok", 0, 0)


# --- fields: null is absent; what is not built is refused ---------------------------------------
@pytest.mark.parametrize("field", ["max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
                                   "seed", "stop", "stream", "ignore_eos", "context", "n", "stream_options",
                                   "logprobs", "echo", "logit_bias", "presence_penalty", "frequency_penalty",
                                   "best_of", "suffix", "user", "model", "tools", "functions",
                                   "response_format", "top_logprobs"])
def test_null_means_absent(server, field):
    base = {"prompt": "Once upon a time", "max_tokens": 12, "seed": 3, "ignore_eos": True}
    base = {k: v for k, v in base.items() if k != field} | ({"temperature": 0} if field == "seed" else {})
    want = httpx.post(server.url + "/v1/completions", json=base, timeout=30)
    got = httpx.post(server.url + "/v1/completions", json={**base, field: None}, timeout=30)
    assert got.status_code == want.status_code == 200, got.text
    if field == "max_tokens":  # absent: OpenAI's default of 16
        assert got.json()["usage"]["completion_tokens"] == 16 and got.json()["choices"][0]["finish_reason"] == "length"
    else:
        assert got.json()["choices"] == want.json()["choices"]


@pytest.mark.parametrize("field, value", [("logprobs", 6), ("logprobs", -1), ("echo", 1), ("best_of", 3),
                                          ("suffix", "The end."), ("logit_bias", {"300": 5}), ("logit_bias", {"a": 1}),
                                          ("logit_bias", {"50": 101}), ("presence_penalty", 2.5),
                                          ("frequency_penalty", -3), ("tools", [{"type": "function"}]),
                                          ("functions", [{"name": "f"}]), ("response_format", {"type": "xml"})])
def test_fields_not_built_or_out_of_bounds_are_refused_by_name(server, field, value):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_lone_surrogates_are_a_400_and_the_server_serves_on(server):
    for body in (b'{"prompt": "a\\ud800b"}', b'{"prompt": "x", "stop": ["\\udc00"]}'):
        r = httpx.post(server.url + "/v1/completions", content=body)
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    assert health(server.url)["status"] == "ok" and wait_idle(server.url)["active_rows"] == 0
    assert server.client.completions.create(model="m", prompt="Hi", max_tokens=3).choices


def test_max_tokens_null_with_the_openai_client_keeps_the_connection(server):
    with httpx.Client(timeout=30) as c:
        for _ in range(3):  # one keep-alive connection: every answer is whole
            r = c.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": None, "temperature": 0})
            assert r.status_code == 200 and r.headers.get("connection") != "close"
    done = server.client.completions.create(model="m", prompt="Hi", max_tokens=None, temperature=0)
    assert done.usage.completion_tokens <= 16


# --- slow and departing clients --------------------------------------------------------------------
def _slow_socket(port, i):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 3 == 0:  # headers that never end
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
    elif i % 3 == 1:  # a body that never ends
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200\r\n\r\n{\"prompt\": \"a")
    else:  # nothing at all
        pass
    return s


def _closed_by_server(s, seconds) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except (socket.timeout, ConnectionResetError):
        return False


def test_slow_sockets_are_closed_and_others_served_meanwhile(server):
    """300 sockets that send headers or a body and then nothing (a byte at a time is the same to
    the server): each is closed after --timeout-seconds (1 s here), while normal requests are
    answered at once."""
    socks = [_slow_socket(server.port, i) for i in range(300)]
    try:
        t0 = time.monotonic()
        for _ in range(5):
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 5}, timeout=10)
            assert r.status_code == 200
        assert time.monotonic() - t0 < 1.0  # served meanwhile, not after the slow ones went
        closed = [_closed_by_server(s, 4.0) for s in socks]
        assert all(closed), f"{closed.count(False)} of 300 slow sockets still open"
    finally:
        for s in socks:
            s.close()
    assert health(server.url)["status"] == "ok"


def _answer(s) -> bytes:
    """Everything the server sends until it closes the connection."""
    s.settimeout(5)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


def test_a_body_longer_than_it_comes_is_408_or_413(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1024)
        assert _answer(s).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        t0 = time.monotonic()
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 408") and b"--timeout-seconds" in answer
        assert 0.5 < time.monotonic() - t0 < 3


def _closed_while_trickling(s, data: bytes) -> bool:
    """Send `data` every 0.25 s for 3 s: the server (--timeout-seconds 1) closes it within 4.5 s."""
    t0 = time.monotonic()
    try:
        for _ in range(12):
            s.sendall(data)
            time.sleep(0.25)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return _closed_by_server(s, 3.0) and time.monotonic() - t0 < 4.5


def test_slow_bodies_on_any_route_are_closed(server):
    """A body a byte at a time to a route that answers without reading it: closed all the same."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        assert _closed_while_trickling(s, b"x")


def test_connections_are_bounded(bundled):
    """Past --max-connections a connection gets a JSON 503 and is closed; the first ones stay."""
    s = Served(bundled["int8"], "--max-connections", "20", "--timeout-seconds", "5")
    try:
        socks = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(20)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", s.port)) as extra:
            answer = _answer(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b"--max-connections" in answer
        socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the first ones are served
        socks[0].settimeout(5)
        assert socks[0].recv(4096).startswith(b"HTTP/1.1 200")
        for sock in socks:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        assert s.stop() == 0


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_row_within_a_second(bundled):
    s = Served(bundled["int8"])
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 4096, "ignore_eos": True}

        def give_up(_):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            list(pool.map(give_up, range(20)))
        t0 = time.monotonic()
        h = wait_idle(s.url, 1.0)
        assert h["active_rows"] == 0 and h["queued_requests"] == 0, (h, time.monotonic() - t0)
    finally:
        assert s.stop() == 0


def test_metrics_and_health_agree_idle_under_load_and_after_drops(bundled):
    s = Served(bundled["int8"])
    try:
        def agree():
            h = health(s.url)
            return (h["active_rows"], h["queued_requests"]) == (metric(s.url, "mixer_active_rows"),
                                                                 metric(s.url, "mixer_queue_depth")), h
        assert agree() == (True, {**health(s.url), "active_rows": 0})
        done = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 5}, timeout=30)
        assert done.status_code == 200 and agree() == (True, {**health(s.url), "active_rows": 0})  # ended by itself
        body = {"prompt": "Once", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        clients = [httpx.Client(timeout=30) for _ in range(8)]
        streams = [c.stream("POST", s.url + "/v1/completions", json=body) for c in clients]
        lines = [st_.__enter__().iter_lines() for st_ in streams]  # (kept: a dropped iterator closes)
        for it in lines:
            next(it)  # every row is live
        ok, h = agree()
        assert ok and h["active_rows"] == 8
        for st_, c in zip(streams, clients):
            st_.__exit__(None, None, None)
            c.close()
        h = wait_idle(s.url, 2.0)
        assert h["active_rows"] == 0 and agree()[0]
    finally:
        assert s.stop() == 0


def test_sigterm_cuts_a_stream_with_an_error_event_not_a_length(bundled):
    """A stream cut short by shutdown ends with an error event (code "shutdown") and [DONE]; a
    finish_reason of "length" would claim it reached max_tokens."""
    s = Served(bundled["int8"], "--shutdown-seconds", "3", "--max-tokens-limit", "200000")
    events = []  # (200,000 bytes take seconds at any speed: the signal comes long before the end)
    body = {"prompt": "Once", "max_tokens": 200000, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", s.url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 30:
                    s.proc.send_signal(signal.SIGTERM)
    assert s.stop(timeout=10) == 0
    assert events[-1] == "[DONE]" and 30 <= len(events)
    last = json.loads(events[-2])
    assert last["error"]["code"] == "shutdown" and "choices" not in last
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[:-2])


# --- found by an outside tester ------------------------------------------------------------------
def test_stray_bytes_after_an_answer_cannot_hold_a_connection(server):
    """Blank lines between keep-alive requests (which never begin a request) start the clock too."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_while_trickling(s, b"\r\n")


def test_an_endless_head_is_431_not_a_gigabyte(server):
    """30 MB of header lines: the server answers 431 past 64 KB and closes (the client may see
    the close as a reset, having sent more), and its memory does not grow with what was sent."""
    before = rss_mb(server.proc.pid)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(15000):
                s.sendall(b"X-A: " + b"b" * 2040 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = _answer(s)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert rss_mb(server.proc.pid) - before < 20 and health(server.url)["status"] == "ok"


def test_malformed_http_gets_a_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n")
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 400") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]


def test_a_body_that_is_not_json_is_415(server):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "Hi"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", [{"temperature": 1e-308}, {"temperature": 5e-324}, {"temperature": 2.0, "top_k": 0,
                                                                                      "top_p": 1, "min_p": 0}])
def test_extreme_but_allowed_sampling_values_complete(server, body):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8, **body})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text


def test_a_penalty_that_would_overflow_is_refused(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "repeat_penalty": 1e-310})
    assert r.status_code == 400 and r.json()["error"]["param"] == "repeat_penalty"


def test_a_burst_within_rows_plus_queue_is_never_429(bundled):
    s = Served(bundled["int8"], "--max-batch", "4", "--max-queue", "8")
    try:
        for _ in range(3):
            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(lambda i: httpx.post(s.url + "/v1/completions", timeout=30,
                                                           json={"prompt": "Hi", "max_tokens": 1}).status_code,
                                      range(12)))
            assert codes == [200] * 12
    finally:
        assert s.stop() == 0


def test_long_prompts_fold_beside_the_streams_not_in_front_of_them(bundled):
    """Two 64 KB unbounded prompts (1.5 s of folding each here), and two prompts scored whole for
    echo with logprobs (16 KB in halve; 700 bytes in window, a call of W bytes per byte past W)
    while a stream runs: the stream never stops for a prompt's whole fold (they fold on the
    prefill thread), and each long prompt gets the bytes it makes alone."""
    s = Served(bundled["int8"], "--max-prompt-bytes", "70000")
    try:
        big = ["Once upon a time, " * 3641 + str(i) for i in range(2)]  # 65,540 bytes each
        scored = [("Lily ran. " * 1600, "halve"), ("Lily ran. " * 70, "window")]
        gaps, done = [], []

        def watch():
            body = {"prompt": "Lily", "max_tokens": 4000, "ignore_eos": True, "stream": True}
            last = time.monotonic()
            with httpx.Client(timeout=60) as c, c.stream("POST", s.url + "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    now = time.monotonic()
                    if line.startswith("data: ") and not done:
                        gaps.append(now - last)
                    last = now
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            stream = pool.submit(watch)
            time.sleep(0.5)
            echoes = [pool.submit(lambda p, mode: httpx.post(s.url + "/v1/completions", timeout=60, json={
                "prompt": p, "max_tokens": 0, "echo": True, "logprobs": 1, "context": mode}).json(), *pm)
                for pm in scored]
            answers = list(pool.map(lambda p: httpx.post(s.url + "/v1/completions", timeout=60, json={
                "prompt": p, "max_tokens": 3, "seed": 1, "context": "unbounded"}).json(), big))
            echoes = [e.result() for e in echoes]
            done.append(True)
            stream.result()
        assert max(gaps) < 1.0, f"the stream stopped for {max(gaps):.2f} s"
        model = MixerModel(bundled["int8"])
        want = generate(model, big[0], GenerateOptions.of(max_new_tokens=3, seed=1, context="unbounded"))
        assert all("choices" in a for a in answers), answers
        assert answers[0]["choices"][0]["text"] == want
        for (prompt, _), e in zip(scored, echoes):
            assert e["choices"][0]["text"] == prompt and len(e["choices"][0]["logprobs"]["tokens"]) == len(prompt)
    finally:
        assert s.stop() == 0
