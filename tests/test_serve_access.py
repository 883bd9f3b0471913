"""Who may call mixer-serve (issue 22, item 6): --api-key / --api-key-file with the official openai
client and raw HTTP, CORS for pages of other origins, GET /v1/models/{id}, and the playground
asking for the key (headless Chromium). Every server is started here on 127.0.0.1 and stopped."""
import pytest

httpx = pytest.importorskip("httpx")  # the test extra; the fast tier runs without it
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
from serving import Served  # noqa: E402

KEY = "sk-local-7f3a"


@pytest.fixture(scope="module")
def keyed(bundled, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(KEY + "\n")
    s = Served(bundled["int8"], "--api-key-file", str(key_file), "--cors-origins", "http://app.example")
    yield s
    assert s.stop() == 0


def test_the_key_opens_the_api_and_nothing_else_does(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    done = client.completions.create(model="m", prompt="Once upon a time", max_tokens=10, temperature=0)
    assert done.choices[0].text and [m.id for m in client.models.list().data] == [done.model]
    for wrong in ("sk-wrong", KEY + "x", KEY[:-1], ""):
        bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key=wrong or "none", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="m", prompt="x", max_tokens=1)
    for path in ("/v1/models", "/metrics", "/v1/models/int8"):
        r = httpx.get(keyed.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(keyed.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(keyed.url + "/v1/completions", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200  # the supervisor's probe
    assert "API key" in httpx.get(keyed.url + "/").text       # the page, which asks for it


def test_cors_lets_the_named_origin_call_and_no_other(keyed):
    pre = {"Access-Control-Request-Method": "POST",  # (and the headers OpenAI's JS client adds)
           "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}
    ok = httpx.options(keyed.url + "/v1/completions", headers={"Origin": "http://app.example", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(keyed.url + "/v1/completions", headers={"Origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in other.headers
    r = httpx.post(keyed.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                   headers={"Origin": "http://app.example", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"


def test_without_cors_origins_no_page_elsewhere_may_call(bundled):
    s = Served(bundled["int8"])
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                       headers={"Origin": "http://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        one = httpx.get(s.url + "/v1/models/" + bundled["int8"].stem)
        assert one.status_code == 200 and one.json()["id"] == bundled["int8"].stem
        missing = httpx.get(s.url + "/v1/models/gpt-4")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=30)
        assert client.models.retrieve(bundled["int8"].stem).id == bundled["int8"].stem
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("flags, message", [(["--api-key", "a", "--api-key-file", "f"], "not both"),
                                            (["--api-key", " "], "empty"),
                                            (["--api-key-file", "/nonexistent/key"], "no such file")])
def test_bad_key_flags_are_one_line_and_exit_1(bundled, flags, message):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "micromixer_edge.serve.cli", str(bundled["int8"]), "--port", "0",
                           *flags], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_the_playground_asks_for_the_key(keyed, tmp_path):
    from browser import Browser
    b = Browser(tmp_path / "profile")
    try:
        b.goto(keyed.url + "/")
        b.eval("document.getElementById('max_tokens').value = '20'; document.getElementById('go').click(); true")
        status = b.wait_for("document.getElementById('out').dataset.done === '1' && "
                            "document.getElementById('status').textContent")
        assert "needs an API key" in status
        b.eval(f"document.getElementById('key').value = '{KEY}'; document.getElementById('go').click(); true")
        b.wait_for("document.getElementById('status').textContent.startsWith('done')")
        assert len(b.eval("document.getElementById('out').textContent")) > len("Once upon a time")
    finally:
        b.close()
