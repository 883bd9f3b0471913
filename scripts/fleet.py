"""A fleet on one machine: N mixer-serve processes behind Debian's nginx, and what it delivers.

    python scripts/fleet.py MODEL.onnx [--servers 1,3] [--clients 16] [--seconds 10] [--max-tokens 200]

For each fleet size: N servers (127.0.0.1, free ports, one shared --state-key-file), nginx in
front of them with `nginx_conf` (docs/fleet.md), then --clients closed-loop chat conversations
through nginx, each turn carrying the last turn's state; prints bytes/s through nginx. nginx comes
from Debian's package (scripts/nginx-setup.sh installs it). `nginx_conf` and `Fleet` are the
fleet test's too (tests/test_fleet.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from micromixer_edge.runtime.cpu import kernel_flags

ROOT = Path(__file__).resolve().parents[1]


def nginx_conf(port: int, upstreams: list[int], run_dir: Path) -> str:
    """nginx in front of mixer-serve processes (docs/fleet.md explains each line)."""
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in upstreams)
    temp = "\n".join(f"  {kind}_temp_path {run_dir}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
    return f"""daemon off;
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}
  upstream mixers {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://mixers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering on;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 2s;
      proxy_read_timeout 300s;
      client_max_body_size 3m;
    }}
  }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """N mixer-serve processes and nginx before them; stop() ends them all."""

    def __init__(self, model: str, servers: int, key_file: str, flags: tuple = ()):
        self.run_dir = Path(tempfile.mkdtemp(prefix="mixer-fleet-"))
        self.servers = [self._serve(model, key_file, flags) for _ in range(servers)]
        self.port = free_port()
        conf = self.run_dir / "nginx.conf"
        conf.write_text(nginx_conf(self.port, [p for _, p in self.servers], self.run_dir))
        self.nginx = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(self.run_dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_for(self.url + "/health", self.nginx)

    @staticmethod
    def _serve(model: str, key_file: str, flags: tuple) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sys.executable, "-m", "micromixer_edge.serve.cli", model, "--port", "0",
                                 "--state-key-file", key_file, "--no-access-log", *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        if not match:
            proc.kill()
            raise RuntimeError("a mixer-serve did not start")
        return proc, int(match.group(1))

    def stop_server(self, i: int) -> int:
        proc = self.servers[i][0]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(30)

    def stop(self) -> None:
        self.nginx.send_signal(signal.SIGQUIT)
        for proc in [self.nginx] + [p for p, _ in self.servers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.nginx] + [p for p, _ in self.servers]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 10) -> None:
    import httpx
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("nginx did not answer in time")


def turn(url: str, message: str, state: str | None, max_tokens: int, seed: int | None = None) -> tuple[str, str]:
    """One chat turn through the fleet: (the reply, the state to carry)."""
    import httpx
    body = {"messages": [{"role": "user", "content": message}], "max_tokens": max_tokens, "return_state": True,
            "temperature": 0 if seed is None else 0.8}
    if state is not None:
        body["state"] = state
    if seed is not None:
        body["seed"] = seed
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    choice = r.json()["choices"][0]
    return choice["message"]["content"], choice["state"]


def bench(model: str, servers: int, clients: int, seconds: float, max_tokens: int, key_file: str) -> float:
    """Bytes/s of `clients` closed-loop conversations through nginx in front of `servers`."""
    fleet = Fleet(model, servers, key_file)
    try:
        deadline, made = time.monotonic() + seconds, [0] * clients

        def client(i: int) -> None:
            state, t = None, 0
            while time.monotonic() < deadline:
                reply, state = turn(fleet.url, f"Tell me more, part {t}.", state, max_tokens, seed=i * 1000 + t)
                made[i] += len(reply.encode())
                t += 1
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        return sum(made) / (time.monotonic() - t0)
    finally:
        fleet.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--servers", default="1,3")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--max-tokens", type=int, default=200)
    a = p.parse_args()
    if nginx_binary() is None:
        sys.exit("error: nginx is not installed: sudo bash scripts/nginx-setup.sh (Debian's nginx-light)")
    print("cpu flags:", kernel_flags(), "| cores:", os.cpu_count())
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("fleet-bench-" + "k" * 32 + "\n")
    for n in [int(x) for x in a.servers.split(",")]:
        rate = bench(a.model, n, a.clients, a.seconds, a.max_tokens, f.name)
        print(f"{n} server(s) behind nginx, {a.clients} conversations: {rate:,.0f} bytes/s")
    os.unlink(f.name)


if __name__ == "__main__":
    main()
