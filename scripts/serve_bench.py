"""mixer-serve throughput: aggregate bytes/s at 1, 8 and 32 concurrent streaming clients (1 thread),
p50 / p99 time to first byte, and the server's peak RSS. Numbers go to docs/performance.md.

    python scripts/serve_bench.py MODEL.onnx [MORE.onnx ...] [--bytes 200] [--cycles 5] [--seconds 1]

Each client streams `--bytes` bytes (temperature 0.8, its own seed) over HTTP: coroutines of one
asyncio loop sharing one warmed-up aiohttp session (its C parser), so the clients take as little
as they can of the 2 cores the server runs on, and their start-up is not counted against it. The server runs on 127.0.0.1 on an ephemeral port and
is stopped at the end.
"""
import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time

import aiohttp

SERVER = ["-m", "micromixer_edge.serve.cli"]
PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named"]


async def stream(client: aiohttp.ClientSession, url: str, i: int, n: int) -> tuple[float, int]:
    """One streaming request: (time to its first text chunk, bytes of text)."""
    body = {"prompt": PROMPTS[i % 4], "max_tokens": n, "seed": i, "stream": True, "temperature": 0.8}
    t0, first, size = time.perf_counter(), None, 0
    async with client.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                first = first or time.perf_counter()
                size += sum(len(ch["text"].encode()) for ch in json.loads(line[6:])["choices"])
    return first - t0, size


LEVELS = (1, 8, 32)


async def level(client, url: str, clients: int, n: int, seconds: float) -> tuple[float, list[float]]:
    """Rounds of `clients` concurrent requests for at least `seconds`: (bytes/s, first-byte times)."""
    t0, size, ttfb = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        got = await asyncio.gather(*(stream(client, url, i, n) for i in range(clients)))
        size += sum(g[1] for g in got)
        ttfb += [g[0] for g in got]
    return size / (time.perf_counter() - t0), ttfb


async def rounds(url: str, n: int, cycles: int, seconds: float, model: str) -> None:
    """The levels interleave, cycle after cycle, so a slow spell of a shared machine hits them all;
    each level's figure is its median over the cycles, and each ratio the median of per-cycle ratios."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as client:
        await asyncio.gather(*(stream(client, url, i, 8) for i in range(32)))  # warm: 32 open connections
        rates, ttfb = {c: [] for c in LEVELS}, {c: [] for c in LEVELS}
        for _ in range(cycles):
            for clients in LEVELS:
                rate, first = await level(client, url, clients, n, seconds)
                rates[clients].append(rate)
                ttfb[clients] += first
        for clients in LEVELS:
            ratio = statistics.median(r / one for r, one in zip(rates[clients], rates[1]))
            t = sorted(ttfb[clients])
            print(f"{model} clients {clients:>2}: {statistics.median(rates[clients]):8,.0f} bytes/s "
                  f"({ratio:4.1f}x one client; cycles {min(rates[clients]):,.0f}-{max(rates[clients]):,.0f}) | "
                  f"TTFB p50 {t[len(t) // 2] * 1e3:6.1f} ms p99 {t[int(len(t) * 0.99) - 1] * 1e3:6.1f} ms", flush=True)


def bench(model: str, n: int, cycles: int, seconds: float) -> None:
    proc = subprocess.Popen([sys.executable, *SERVER, model, "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
    try:
        asyncio.run(rounds(url, n, cycles, seconds, model))
        hwm = [ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmHWM")][0].split()[1]
        print(f"{model}: server peak RSS {int(hwm) / 1024:.1f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--bytes", type=int, default=200)
    p.add_argument("--cycles", type=int, default=5, help="times each level runs, interleaved")
    p.add_argument("--seconds", type=float, default=1.0, help="rounds of a level last at least this long")
    a = p.parse_args()
    for m in a.models:
        bench(m, a.bytes, a.cycles, a.seconds)
