"""mixer-serve with real clients on 127.0.0.1 and an ephemeral port: the official openai package,
raw HTTP (httpx) for the bad-input matrix and dropped connections, and headless Chromium for the
playground. Every server here is started by the test, bounded in time, and stopped."""
import concurrent.futures
import json
import re
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")  # the test extra; the fast tier runs without it

from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.generate import generate
from micromixer_edge.runtime.model import MixerModel

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")
from serving import Served, alone, metric, wait_idle  # noqa: E402


PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named", "Tom had a big red",
           "The sun was", "Mom said,", "In the park there was a tall tree"]


def _alone(model, prompt, n, seed, temperature=0.8, context="halve"):
    return _alone_row(model, prompt, n, seed, temperature, context)[0]


def _alone_row(model, prompt, n, seed, temperature=0.8, context="halve", stop=(), **sampling):
    """(text, finish_reason, completion tokens) of the request's row run alone in an engine."""
    return alone(model, prompt, max_new_tokens=n, seed=seed, temperature=temperature, context=context, stop=stop,
                 **sampling)


def test_openai_client_matches_mixer_run(server, bundled):
    args = ["-p", "Once upon a time", "-n", "120", "--seed", "7", "--temperature", "0.9", "--top-k", "30"]
    run = subprocess.run([sys.executable, "-c", "from micromixer_edge.runtime.cli import main; main()",
                          str(bundled["int8"]), *args], capture_output=True, text=True, timeout=120)
    want = run.stdout.removesuffix("\n")
    kw = dict(model="i", prompt="Once upon a time", max_tokens=120, seed=7, temperature=0.9,
              extra_body={"top_k": 30})
    text, finish, tokens = _alone_row(MixerModel(bundled["int8"]), "Once upon a time", 120, 7, 0.9, top_k=30)
    assert text == want  # the engine's row and mixer-run agree
    done = server.client.completions.create(**kw)
    assert done.choices[0].text == want
    assert (done.usage.completion_tokens, done.choices[0].finish_reason) == (tokens, finish)
    pieces = list(server.client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == want
    assert pieces[-1].choices[0].finish_reason == done.choices[0].finish_reason
    assert [m.id for m in server.client.models.list().data] == [bundled["int8"].stem]


def test_stop_strings_and_context_extensions(server, bundled):
    """Past W (300 bytes: both modes cross W = 256 when no stop string comes first)."""
    model = MixerModel(bundled["int8"])
    for prompt, context, stop in (("Lily and Ben", "window", [".", "!"]), ("The sun was", "unbounded", ["the"])):
        got = server.client.completions.create(model="i", prompt=prompt, max_tokens=300, temperature=0,
                                               stop=stop, extra_body={"context": context})
        want = _alone_row(model, prompt, 300, None, 0, context, stop=stop)
        assert (got.choices[0].text, got.choices[0].finish_reason) == want[:2]
        assert not any(s in got.choices[0].text for s in stop)


def _stream(url, prompt, n, seed, drop_after=None):
    """Raw SSE over httpx; returns (text, finish_reason, usage) or the chunks seen before dropping."""
    body = {"prompt": prompt, "max_tokens": n, "seed": seed, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": drop_after is not None}  # a stream to drop runs until it is dropped
    text, finish, usage, chunks = [], None, None, 0
    with httpx.Client(timeout=60) as client, client.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            usage = doc.get("usage") or usage
            for choice in doc["choices"]:
                text.append(choice["text"])
                finish = choice["finish_reason"] or finish
            chunks += 1
            if drop_after is not None and chunks >= drop_after:
                return "".join(text), "dropped", None
    return "".join(text), finish, usage


def test_32_concurrent_streams_equal_each_alone(server, bundled):
    model = MixerModel(bundled["int8"])
    before = metric(server.url, "mixer_tokens_generated_total")
    jobs = [(PROMPTS[i % 8] + " " * (i // 8), 200, 1000 + i) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda j: _stream(server.url, *j), jobs))
    for (prompt, n, seed), (text, finish, usage) in zip(jobs, results):
        assert (text, finish, usage["completion_tokens"]) == _alone_row(model, prompt, n, seed), prompt
    generated = sum(u["completion_tokens"] for _, _, u in results)
    assert metric(server.url, "mixer_tokens_generated_total") - before == generated


def test_dropped_connections_free_their_rows(server, bundled):
    model = MixerModel(bundled["int8"])
    jobs = [(PROMPTS[i % 8], 4000 if i % 2 else 150, 50 + i, 20 if i % 2 else None) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda j: _stream(server.url, *j), jobs))
    for (prompt, n, seed, drop), (text, finish, _) in zip(jobs, results):
        if drop is None:
            assert (text, finish) == _alone_row(model, prompt, n, seed)[:2]
        else:
            assert finish == "dropped"
    assert wait_idle(server.url, 10) == {"status": "ok", "active_rows": 0, "queued_requests": 0,
                                                        "model": bundled["int8"].stem}


BAD = [  # (method, path, body, status, param)
    ("POST", "/v1/completions", b"{not json", 400, None),
    ("POST", "/v1/completions", b"[1, 2]", 400, None),
    ("POST", "/v1/completions", {"max_tokens": 5}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": ["a", 1]}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": [65, 300]}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": []}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": [[65], "b"]}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 10 ** 6}, 400, "max_tokens"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("POST", "/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("POST", "/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("POST", "/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("POST", "/v1/completions", {"prompt": "x", "top_k": -2}, 400, "top_k"),
    ("POST", "/v1/completions", {"prompt": "x", "min_p": 3}, 400, "min_p"),
    ("POST", "/v1/completions", {"prompt": "x", "repeat_penalty": 0}, 400, "repeat_penalty"),
    ("POST", "/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
    ("POST", "/v1/completions", {"prompt": "x", "stop": ["a", 1]}, 400, "stop"),
    ("POST", "/v1/completions", {"prompt": "x", "seed": "7"}, 400, "seed"),
    ("POST", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("POST", "/v1/completions", {"prompt": "x", "ignore_eos": 1}, 400, "ignore_eos"),
    ("POST", "/v1/completions", {"prompt": "x", "context": "sliding"}, 400, "context"),
    ("POST", "/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("POST", "/v1/completions", {"prompt": ["a"] * 90, "n": 2}, 400, "n"),  # 180 rows > --max-batch + --max-queue (160)
    ("POST", "/v1/completions", {"prompt": "x" * 70000}, 413, "prompt"),
    ("GET", "/v1/nothing", None, 404, None),
    ("GET", "/etc/passwd", None, 404, None),
    ("GET", "/../../etc/passwd", None, 404, None),
    ("GET", "/v1/completions", None, 405, None),
    ("DELETE", "/health", None, 405, None),
]


@pytest.mark.parametrize("method, path, body, status, param", BAD)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, method, path, body, status, param):
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = httpx.request(method, server.url + path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
    ok = server.client.completions.create(model="i", prompt="Hi", max_tokens=3, temperature=0)
    assert len(ok.choices[0].text.encode()) <= 3 and server.proc.poll() is None


def test_queue_full_is_429_with_retry_after(bundled):
    s = Served(bundled["int8"], "--max-batch", "1", "--max-queue", "1")
    try:
        body = {"prompt": "Once", "max_tokens": 2000, "temperature": 0}
        with httpx.Client(timeout=30) as c:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(c.post, s.url + "/v1/completions", json=body) for _ in range(4)]
                codes = sorted(f.result().status_code for f in futures)
            busy = next(f.result() for f in futures if f.result().status_code == 429)
        assert codes.count(200) >= 2 and 429 in codes
        assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["message"]
    finally:
        assert s.stop() == 0


@pytest.fixture()
def browser(tmp_path):
    from browser import Browser
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def _requests_total(url) -> float:
    return metric(url, "mixer_requests_total")


def test_playground_streams_a_story_in_headless_chromium(server, browser, tmp_path):
    """Debian's chromium loads the page, which submits its prompt (autorun) and streams the text."""
    page = httpx.get(server.url + "/").text
    assert "<script>" in page and "http" not in page.split("<script>")[1].replace("http://127", "")  # no CDN
    browser.goto(server.url + "/?prompt=Once%20upon%20a%20time&max_tokens=40&autorun=1")
    browser.wait_for("document.getElementById('out').dataset.done === '1'")
    out, status = browser.eval("[document.getElementById('out').textContent, "
                               "document.getElementById('status').textContent]")
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time") and status.startswith("done")
    browser.screenshot(tmp_path / "playground.png")  # a look for people: not kept in git
    assert (tmp_path / "playground.png").stat().st_size > 1000


def test_playground_double_click_sends_one_request(server, browser, bundled):
    browser.goto(server.url + "/")
    before = _requests_total(server.url)
    browser.eval("document.getElementById('temperature').value = '0';"
                 "document.getElementById('max_tokens').value = '120';"
                 "const b = document.getElementById('go'); b.click(); b.click(); true")
    browser.wait_for("document.getElementById('out').dataset.done === '1'")
    out = browser.eval("document.getElementById('out').textContent")
    want = generate(MixerModel(bundled["int8"]), "Once upon a time",
                    GenerateOptions.of(max_new_tokens=120, temperature=0))
    assert out == "Once upon a time" + want  # one stream, not two interleaved
    assert _requests_total(server.url) - before == 1


def test_playground_stop_cancels_the_stream(server, browser):
    browser.goto(server.url + "/")
    # the stream must outlast the click: the test's fetch adds ignore_eos (stories end in ~1 s)
    browser.eval("const f = window.fetch; window.fetch = (u, o) => f(u, {...o, body: JSON.stringify("
                 "{...JSON.parse(o.body), ignore_eos: true})}); true")
    browser.eval("document.getElementById('max_tokens').value = '4096'; document.getElementById('go').click(); true")
    browser.wait_for("document.getElementById('go').textContent === 'Stop' && "
                     "document.getElementById('out').textContent.length > 30")
    time.sleep(0.5)
    browser.eval("document.getElementById('go').click(); true")
    browser.wait_for("document.getElementById('status').textContent === 'stopped'")
    assert browser.eval("document.getElementById('go').textContent") == "Generate"
    assert wait_idle(server.url)["active_rows"] == 0


def test_playground_empty_fields_mean_the_defaults(server, browser):
    browser.goto(server.url + "/")
    browser.eval("document.getElementById('temperature').value = '';"
                 "document.getElementById('max_tokens').value = ''; document.getElementById('go').click(); true")
    browser.wait_for("document.getElementById('out').dataset.done === '1'")
    out, status = browser.eval("[document.getElementById('out').textContent, "
                               "document.getElementById('status').textContent]")
    assert status.startswith("done") and len(out) > len("Once upon a time") + 20, status


def test_playground_says_when_the_server_cannot_be_reached(bundled, browser):
    s = Served(bundled["int8"])
    browser.goto(s.url + "/")
    assert s.stop() == 0
    browser.eval("document.getElementById('go').click(); true")
    status = browser.wait_for("document.getElementById('out').dataset.done === '1' && "
                              "document.getElementById('status').textContent")
    assert "cannot reach the server" in status
    assert browser.eval("document.getElementById('go').textContent") == "Generate"


def test_float_model_served_equals_generate(bundled):
    s = Served(bundled["float"])
    try:
        model = MixerModel(bundled["float"])
        for i, prompt in enumerate(PROMPTS[:4]):
            got = s.client.completions.create(model="f", prompt=prompt, max_tokens=150, seed=i, temperature=0.8)
            assert got.choices[0].text == _alone(model, prompt, 150, i)
    finally:
        assert s.stop() == 0
