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
