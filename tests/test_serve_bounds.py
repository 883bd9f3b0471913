"""No request can buy the server (issue 26): an answer's size is bounded before it runs, a whole
answer is written without holding the event loop, window-mode rows take their share of the loop
only, chat templates run bounded in a process of their own, and every error is JSON. Each server
is started here on 127.0.0.1 with an ephemeral port, with its default limits unless a test says
otherwise, and stopped."""
import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from serving import Served, rss_mb, wait_idle  # noqa: E402

HEALTH_BOUND = 0.5   # seconds /health may take, whatever else runs (the bound)
GAP_BOUND = 1.0      # seconds a running stream may go without a chunk
BIG = {"n": 32, "max_tokens": 4096, "logprobs": True, "top_logprobs": 20, "ignore_eos": True}  # the 136-byte request


class HealthWatch:
    """Polls /health every 50 ms on a thread of its own; `worst` is the longest answer it waited for."""

    def __init__(self, url: str):
        self.url, self.worst, self.polls, self._stop, self.failed = url, 0.0, 0, threading.Event(), None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.failed is not None:  # (a poll that failed or timed out is a stall, not a pass)
            raise AssertionError(f"/health failed: {self.failed!r}")
        assert self.polls >= 3

    def _run(self):
        try:
            with httpx.Client(timeout=30) as c:
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    assert c.get(self.url + "/health").status_code == 200
                    self.worst, self.polls = max(self.worst, time.perf_counter() - t0), self.polls + 1
                    time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by __exit__
            self.failed = e


def _stream_gaps(url: str, body: dict, seconds: float) -> float:
    """Read a completion stream for `seconds` (or to its end); the longest wait between chunks."""
    worst, last, t_end = 0.0, None, time.perf_counter() + seconds
    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            now = time.perf_counter()
            if line.startswith("data: "):
                worst, last = (max(worst, now - last) if last else 0.0), now
            if now > t_end or line == "data: [DONE]":
                break
    return worst


@pytest.fixture(scope="module")
def server(bundled):
    """Default limits: --max-answer-mb 8, --answers-in-flight-mb 64, --template-seconds 1."""
    s = Served(bundled["int8"])
    yield s
    assert s.stop() == 0


def test_an_answer_past_the_limit_is_a_400_that_says_what_to_lower(server):
    """The issue's 136-byte chat request (a 159 MB answer) and five 64 KB prompts with echo and
    logprobs (1.6 GB) are refused before they run, naming the field and the flag."""
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "Hi"}], **BIG})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "top_logprobs" and "--max-answer-mb" in err["message"] and "max_tokens" in err["message"]
    r = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "prompt": ["a" * 65536] * 5, "n": 31, "echo": True, "logprobs": 5, "max_tokens": 16})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    assert httpx.get(server.url + "/health").json()["active_rows"] == 0  # nothing ran


def _sizes_within_estimate(url: str, endpoint: str, body: dict) -> tuple[int, int]:
    from micromixer_edge.serve.fields import chat_messages, chat_request, parse_completion
    from micromixer_edge.serve.settings import Settings
    data = json.dumps(body).encode()
    if endpoint == "chat":
        rendered = httpx.post(url + "/tokenize", json={"messages": body["messages"]}).json()["tokens"]
        req = chat_request(chat_messages(data)[0], bytes(rendered).decode(), Settings(model="m"))
    else:
        req = parse_completion(data, Settings(model="m"))
    r = httpx.post(f"{url}/v1/{'chat/' if endpoint == 'chat' else ''}completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return len(r.content), req.answer_bytes


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompts=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
                        min_size=1, max_size=3),
       n=st.integers(1, 3), max_tokens=st.integers(0, 60), k=st.none() | st.integers(0, 5), echo=st.booleans(),
       temperature=st.sampled_from([0, 1.5]), chat=st.booleans())
def test_the_estimate_bounds_the_answer_that_comes(server, prompts, n, max_tokens, k, echo, temperature, chat):
    """The estimate is the most JSON the answer can hold: every real answer (any text, non-ASCII
    and control bytes included, echo, logprobs, n) is at most that long."""
    common = {"n": n, "max_tokens": max_tokens, "temperature": temperature, "ignore_eos": True}
    if chat:
        body = {"messages": [{"role": "user", "content": p} for p in prompts], **common,
                **({"logprobs": True, "top_logprobs": 4 * k} if k is not None else {})}
    else:
        body = {"prompt": prompts, "echo": echo, **common, **({"logprobs": k} if k is not None else {})}
    size, estimate = _sizes_within_estimate(server.url, "chat" if chat else "text", body)
    assert size <= estimate


def test_the_largest_whole_answer_leaves_health_and_streams_free(server):
    """Answers just under the limit (a chat reply with 20 alternatives a byte; 5 choices with
    logprobs 5): while they are made and written, /health answers within 0.5 s and a running
    stream never waits 1 s for a chunk; the answers are whole and valid JSON."""
    bodies = [("/v1/chat/completions", {"messages": [{"role": "user", "content": "Once"}], "max_tokens": 4096,
                                        "logprobs": True, "top_logprobs": 20, "ignore_eos": True}),
              ("/v1/completions", {"prompt": "Lily", "n": 5, "max_tokens": 4096, "logprobs": 5, "ignore_eos": True})]
    sizes, gaps = [], []
    streamer = threading.Thread(target=lambda: gaps.append(_stream_gaps(
        server.url, {"prompt": "The dog", "max_tokens": 4096, "ignore_eos": True}, 12)))
    with HealthWatch(server.url) as watch:
        streamer.start()
        for path, body in bodies:
            r = httpx.post(server.url + path, json=body, timeout=120)
            assert r.status_code == 200
            doc = r.json()
            assert all(len(c["logprobs"]["content" if "message" in c else "tokens"]) >= 4096 for c in doc["choices"])
            sizes.append(len(r.content))
        streamer.join()
    print(f"answers {[f'{s / 2**20:.1f} MB' for s in sizes]}: /health worst {watch.worst * 1000:.0f} ms over "
          f"{watch.polls} polls, stream gap worst {gaps[0] * 1000:.0f} ms")
    assert watch.worst < HEALTH_BOUND and gaps[0] < GAP_BOUND


def _timed_halve(url: str) -> float:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/completions", timeout=120, json={
        "prompt": "x" * 300, "max_tokens": 100, "temperature": 0, "ignore_eos": True, "context": "halve"})
    assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 100
    return time.perf_counter() - t0


def test_window_rows_take_their_share_of_the_loop_only(server):
    """The issue's case: a stream of 31 window-mode rows past W beside one 100-byte halve request.
    Each window byte is a W-byte re-fold; the rule (docs/server.md) leaves the other rows at least
    (n - k) / n of the loop: here 1/32, so the halve request takes at most ~32x what it takes alone
    (it took 74x, 9.6 s, before)."""
    alone = min(_timed_halve(server.url) for _ in range(3))
    window = {"prompt": "x" * 300, "n": 31, "max_tokens": 4096, "ignore_eos": True, "context": "window",
              "stream": True}
    with httpx.Client(timeout=120) as c, c.stream("POST", server.url + "/v1/completions", json=window) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(40):  # the window rows are running, past W (their prompt is 300 bytes)
            next(lines)
        loaded = _timed_halve(server.url)
    print(f"100 halve bytes: alone {alone * 1000:.0f} ms, beside 31 window rows {loaded * 1000:.0f} ms "
          f"({loaded / alone:.1f}x; the share rule allows 32x)")
    assert loaded < 32 * 1.5 * alone + 0.3


@pytest.fixture(scope="module")
def looping(bundled, tmp_path_factory):
    """A server whose chat template loops 10^10 times on any messages."""
    path = tmp_path_factory.mktemp("tpl") / "loop.jinja"
    path.write_text("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}")
    s = Served(bundled["int8"], "--chat-template", str(path))
    yield s
    s.stop()


def test_a_template_that_runs_too_long_is_that_requests_400(looping):
    """The render is killed at --template-seconds (1): that request gets a 400 naming the bound,
    /health never waits meanwhile, the next chat request is refused the same way (a new worker),
    and completions go on."""
    with HealthWatch(looping.url) as watch:
        for _ in range(2):
            t0 = time.perf_counter()
            r = httpx.post(looping.url + "/v1/chat/completions", timeout=30,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            assert r.status_code == 400 and "--template-seconds" in r.json()["error"]["message"]
            assert r.json()["error"]["param"] == "messages" and time.perf_counter() - t0 < 3
    assert watch.worst < HEALTH_BOUND and watch.polls > 10
    r = httpx.post(looping.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200


def test_sigterm_ends_the_server_during_a_render(bundled, tmp_path):
    path = tmp_path / "loop.jinja"
    path.write_text("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    s = Served(bundled["int8"], "--chat-template", str(path), "--template-seconds", "30", "--shutdown-seconds", "2")
    threading.Thread(target=lambda: httpx.post(s.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}]}), daemon=True).start()
    time.sleep(1.0)  # the render has started
    t0 = time.perf_counter()
    code = s.stop(timeout=30)
    print(f"SIGTERM during a render: exit {code} after {time.perf_counter() - t0:.2f} s")
    assert code == 0 and time.perf_counter() - t0 < 2 + 1.5


@pytest.mark.parametrize("source, flags, why", [
    ("{% for m in messages %}{{ m.content }", [], "not a Jinja template"),
    ("{{ messages[0].content }}" * 200_000, ["--template-seconds", "0.02"], "did not load within"),  # 5 MB
])
def test_a_template_that_cannot_load_is_refused_at_start_in_one_line(bundled, tmp_path, source, flags, why):
    path = tmp_path / "t.jinja"
    path.write_text(source)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "micromixer_edge.serve.cli", str(bundled["int8"]), "--port", "0",
                           "--chat-template", str(path), *flags], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    print(f"{source[:40]!r}: refused in {took:.2f} s: {proc.stderr.strip()}")
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and why in proc.stderr and took < 15


def test_a_template_that_builds_a_gigabyte_is_that_requests_400(bundled, tmp_path):
    """`{{ 'a' * 10**9 }}` (the old server computed it at load: 18.5 s, 1 GB): the worker's memory
    bound refuses it in milliseconds, each request a 400, and the server's RSS does not move."""
    path = tmp_path / "gb.jinja"
    path.write_text("{{ 'a' * 10**9 }}")
    s = Served(bundled["int8"], "--chat-template", str(path))
    try:
        before = rss_mb(s.proc.pid)
        for _ in range(3):
            t0 = time.perf_counter()
            r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]},
                           timeout=30)
            assert r.status_code == 400 and "MemoryError" in r.json()["error"]["message"]
            assert time.perf_counter() - t0 < 2
        assert rss_mb(s.proc.pid) < before + 20
    finally:
        assert s.stop() == 0


def test_a_refused_cors_preflight_is_json(bundled):
    s = Served(bundled["int8"], "--cors-origins", "http://good.example")
    try:
        r = httpx.options(s.url + "/v1/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
        assert "origin" in r.json()["error"]["message"].lower()
        ok = httpx.options(s.url + "/v1/completions", headers={
            "Origin": "http://good.example", "Access-Control-Request-Method": "POST"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://good.example"
    finally:
        assert s.stop() == 0


# --- a search for a request that holds the event loop --------------------------------------------

PROMPTS = st.sampled_from(["Once", "é" * 300, "x" * 4000, "Lily and Ben " * 5000, "\x01é" * 21000])
request_bodies = st.fixed_dictionaries({
    "n": st.integers(1, 32),
    "max_tokens": st.sampled_from([0, 1, 64, 1024, 4096]),
    "ignore_eos": st.just(True),
    "context": st.sampled_from(["halve", "window", "unbounded"]),
    "stream": st.booleans(),
}, optional={"logprobs": st.integers(0, 5), "echo": st.booleans()}).flatmap(lambda body: st.one_of(
    st.builds(lambda p: ("/v1/completions", {**body, "prompt": p}),
              st.lists(PROMPTS, min_size=1, max_size=4) | st.lists(st.integers(3, 255), min_size=1, max_size=3000)),
    st.builds(lambda p, k: ("/v1/chat/completions", {
        **{f: v for f, v in body.items() if f not in ("logprobs", "echo")}, "messages": [{"role": "user", "content": p}],
        **({"logprobs": True, "top_logprobs": k} if k is not None else {})}), PROMPTS, st.none() | st.integers(0, 20))))


async def _health_while(url: str, path: str, body: dict, seconds: float) -> tuple[float, int]:
    """Send body; poll /health each 50 ms until its answer has been read to its end (its whole
    encoding watched) or `seconds` pass (then the client leaves). Returns (worst /health wait,
    the request's status)."""
    async with httpx.AsyncClient(timeout=60) as c:
        async def request():
            async with c.stream("POST", url + path, json=body) as r:
                async for _ in r.aiter_bytes():
                    pass
                return r.status_code
        task, worst, end = asyncio.ensure_future(request()), 0.0, time.perf_counter() + seconds
        while not task.done() and time.perf_counter() < end:
            t0 = time.perf_counter()
            await c.get(url + "/health")
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.05)
        status = task.result() if task.done() else 0
        task.cancel()
    return worst, status


@settings(max_examples=16, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=request_bodies)
def test_no_request_moves_health_past_the_bound(server, request):
    """Hypothesis over completions and chat: n, prompts (strings to 64 KB, control and non-ASCII
    bytes, token ids), max_tokens, logprobs, top_logprobs, echo, context and stream, at the default
    limits: whatever comes back (200, a 400 for too big, 429), /health answers within 0.5 s while
    it runs (to its end, or 8 s)."""
    path, body = request
    worst, status = asyncio.run(_health_while(server.url, path, body, 8))
    assert status in (0, 200, 400, 413, 429) and worst < HEALTH_BOUND, (status, worst)
    wait_idle(server.url, 10)  # the client left: its rows go before the next example


def test_clients_that_never_read_are_dropped_and_give_their_share_back(bundled):
    """Connections that ask for big answers and never read them: once their write buffers are full,
    each is dropped after --timeout-seconds, their rows leave and their share of
    --answers-in-flight-mb comes back (it was held for good)."""
    import socket
    s = Served(bundled["int8"], "--timeout-seconds", "1", "--answers-in-flight-mb", "13", "--max-answer-mb", "13")
    big = {"messages": [{"role": "user", "content": "Hi"}], "n": 2, "max_tokens": 4096, "logprobs": True,
           "top_logprobs": 20}  # 12.4 MB: it fits only once both non-readers (6.2 MB each) are gone
    body = json.dumps({"messages": [{"role": "user", "content": "\u0001"}], "max_tokens": 4096,
                       "ignore_eos": True, "logprobs": True, "top_logprobs": 20}).encode()
    socks = []
    try:
        for stream in (False, True):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            c.connect(("127.0.0.1", s.port))
            data = body[:-1] + (b', "stream": true}' if stream else b"}")
            c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
            socks.append(c)
        time.sleep(0.5)
        busy = httpx.post(s.url + "/v1/chat/completions", timeout=30, json=big)
        assert busy.status_code == 429 and busy.json()["error"]["message"].startswith("the server is busy")
        deadline, ok = time.monotonic() + 30, None
        while time.monotonic() < deadline and (ok is None or ok.status_code != 200):
            time.sleep(0.5)
            ok = httpx.post(s.url + "/v1/chat/completions", timeout=60, json=big)
        assert ok.status_code == 200
        print(f"the non-readers' share was given back within {30 - (deadline - time.monotonic()):.1f} s")
        while httpx.get(s.url + "/health").json()["active_rows"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(s.url + "/health").json()["active_rows"] == 0
    finally:
        for c in socks:
            c.close()
        assert s.stop() == 0


def test_the_access_log_says_what_each_request_cost_and_never_its_text(bundled):
    s = Served(bundled["int8"])
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Secret words", "max_tokens": 7,
                                                        "ignore_eos": True}, timeout=30)
        assert r.status_code == 200
        httpx.post(s.url + "/v1/completions", json={"prompt": 5}, timeout=30)
        httpx.get(s.url + "/health")
        httpx.get(s.url + "/v1/x%0A10.0.0.1%20GET%20/fake%20200")  # a forged line: stays in one line, encoded
    finally:
        assert s.stop() == 0
    time.sleep(0.2)
    log = "".join(s.log)
    import re
    assert re.search(r"^127\.0\.0\.1 POST /v1/completions 200 \d+ B [\d.]+ ms prompt_tokens 13 completion_tokens 7$",
                     log, re.M), log  # (bos and 12 bytes)
    assert re.search(r"^127\.0\.0\.1 GET /v1/x%0A10\.0\.0\.1%20GET%20/fake%20200 404 ", log, re.M)
    assert not re.search(r"^10\.0\.0\.1", log, re.M)
    assert re.search(r"^127\.0\.0\.1 POST /v1/completions 400 \d+ B [\d.]+ ms$", log, re.M)
    assert re.search(r"^127\.0\.0\.1 GET /health 200 ", log, re.M)
    assert "Secret" not in log and log.rstrip().endswith("mixer-serve: stopped")
