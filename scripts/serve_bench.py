"""mixer-serve throughput: aggregate bytes/s at 1, 8 and 32 concurrent streaming clients (1 thread),
p50 / p99 time to first byte, and the server's peak RSS. Numbers go to docs/performance.md.

    python scripts/serve_bench.py MODEL.onnx [MORE.onnx ...] [--bytes 200] [--rounds 3]

Each client streams `--bytes` bytes (temperature 0.8, its own seed) over raw HTTP (httpx); the
server runs on 127.0.0.1 on an ephemeral port and is stopped at the end.
"""
import argparse
import concurrent.futures
import json
import re
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named"]


def stream(url: str, i: int, n: int) -> tuple[float, float, int]:
    body = {"prompt": PROMPTS[i % 4], "max_tokens": n, "seed": i, "stream": True, "temperature": 0.8}
    t0, first, size = time.perf_counter(), None, 0
    with httpx.Client(timeout=120) as c, c.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                first = first or time.perf_counter()
                size += sum(len(ch["text"].encode()) for ch in json.loads(line[6:])["choices"])
    return first - t0, time.perf_counter() - t0, size


def bench(model: str, n: int, rounds: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "micromixer_edge.serve.cli", model, "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
    try:
        base = None
        for clients in (1, 8, 32):
            rates, ttfb = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    got = list(pool.map(lambda i: stream(url, i, n), range(clients)))
                rates.append(sum(g[2] for g in got) / (time.perf_counter() - t0))
                ttfb += [g[0] for g in got]
            rate = statistics.median(rates)
            base = base or rate
            ttfb.sort()
            print(f"{model} clients {clients:>2}: {rate:8,.0f} bytes/s ({rate / base:4.1f}x one client) | "
                  f"TTFB p50 {ttfb[len(ttfb) // 2] * 1e3:6.1f} ms p99 {ttfb[int(len(ttfb) * 0.99) - 1] * 1e3:6.1f} ms",
                  flush=True)
        hwm = [ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmHWM")][0].split()[1]
        print(f"{model}: server peak RSS {int(hwm) / 1024:.1f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--bytes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    for m in a.models:
        bench(m, a.bytes, a.rounds)
