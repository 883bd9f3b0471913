"""A mixer-serve process for tests: started on 127.0.0.1 with an ephemeral port, stopped by the test."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading

import pytest


class Served:
    """`python -m micromixer_edge.serve.cli MODEL --port 0 FLAGS`, or another entry (a script of
    the tests' that injects faults, then runs the same CLI)."""

    def __init__(self, model, *flags, entry=("-m", "micromixer_edge.serve.cli")):
        self.proc = subprocess.Popen([sys.executable, *entry, str(model), "--port", "0", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "mixer-serve: listening on http://127.0.0.1:PORT"
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            pytest.fail(f"server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url, self.port = match.group(0), int(match.group(1))
        self.log: list[str] = []  # what it prints after that: the access log (read, or the pipe would fill)
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        openai = pytest.importorskip("openai")
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", timeout=60, max_retries=0)

    def stop(self, sig=signal.SIGTERM, timeout=20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def rss_mb(pid) -> float:
    """A process's resident memory now, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


# --- what the serve tests share: /health, /metrics, SSE, and the run-alone oracle -----------------
def health(url) -> dict:
    import httpx
    return httpx.get(url + "/health").json()


def wait_idle(url, seconds=5.0) -> dict:
    """/health once no row is active and nothing waits (or after `seconds`)."""
    import time
    deadline, h = time.monotonic() + seconds, health(url)
    while (h["active_rows"] or h["queued_requests"]) and time.monotonic() < deadline:
        time.sleep(0.02)
        h = health(url)
    return h


def metric(url, name) -> float:
    """A Prometheus metric's value, summed over its labels."""
    import httpx
    text = httpx.get(url + "/metrics").text
    return sum(float(v) for _, v in re.findall(rf"^({name}(?:{{[^}}]*}})?) (\S+)$", text, re.M))


def sse_docs(response):
    """The JSON documents of a server-sent-event stream (httpx response), [DONE] left out."""
    import json
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def sse(url, body, timeout=60, path="/v1/completions"):
    """Raw SSE over httpx: (the choices' text joined, the last event's JSON document)."""
    import httpx
    text, last = [], None
    with httpx.Client(timeout=timeout) as c, c.stream("POST", url + path, json=body) as r:
        assert r.status_code == 200, r.read()
        for last in sse_docs(r):
            text += [ch.get("text") or (ch.get("delta") or {}).get("content") or "" for ch in last.get("choices", [])]
    return "".join(text), last


_MODELS = {}


def alone(model, prompt, **options):
    """The oracle of a request's row: (text, finish_reason, completion tokens) of its prompt run
    alone in an engine with GenerateOptions.of(**options); `model` a path or a MixerModel."""
    from micromixer_edge.runtime.engine import Engine, GenerateOptions
    from micromixer_edge.runtime.model import MixerModel
    if not isinstance(model, MixerModel):
        if str(model) not in _MODELS:
            _MODELS[str(model)] = MixerModel(model)
        model = _MODELS[str(model)]
    engine = Engine(model)
    row = engine.add(prompt, GenerateOptions.of(**options))
    text = "".join(piece for _, piece in engine.run())
    return text, row.finish_reason, row.stats.new_tokens
