"""mixer-serve throughput: aggregate bytes/s at 1, 8 and 32 concurrent streaming clients, p50 / p99
time to first byte, p99 of the gap between two chunks of one stream, and the server's peak RSS.
Numbers go to docs/performance.md.

    python scripts/serve_bench.py MODEL.onnx [MORE.onnx ...] [--bytes 200] [--cycles 5] [--seconds 2] [--threads 1]

Each client streams requests of `--bytes` bytes (temperature 0.8, its own seed), one after another,
over HTTP: coroutines of one asyncio loop sharing one warmed-up aiohttp session (its C parser), so
the clients take as little as they can of the 2 cores the server runs on. The server runs on
127.0.0.1 on an ephemeral port and is stopped at the end. Last, the ceiling: the model's own
IO-bound step at batch 32 against batch 1 (rows x bytes/s), measured in the same run, and the
ceiling: the bare batch-32 step's rows x steps/s at one onnxruntime thread, measured before the
server starts; each level's bytes/s is also given as a share of it.
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

from micromixer_edge.runtime.cpu import kernel_flags

SERVER = ["-m", "micromixer_edge.serve.cli"]
PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named"]


async def stream(client: aiohttp.ClientSession, url: str, i: int, n: int, deadline: float = float("inf"),
                 ttfb: list | None = None, gaps: list | None = None) -> int:
    """One streaming request; returns the bytes of text that arrived before `deadline` (then it
    hangs up, and the server frees the row). Appends its time to first text to `ttfb`, and the
    time between each two of its chunks to `gaps`."""
    body = {"prompt": PROMPTS[i % 4], "max_tokens": n, "seed": i, "stream": True, "temperature": 0.8}
    t0, first, size = time.perf_counter(), None, 0
    async with client.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                now = time.perf_counter()
                if now > deadline:
                    break
                if first is None and ttfb is not None:
                    ttfb.append(now - t0)
                elif first is not None and gaps is not None:
                    gaps.append(now - first)
                first = now
                size += sum(len(ch["text"].encode()) for ch in json.loads(line[6:])["choices"])
    return size


LEVELS = (1, 8, 32)


async def level(client, url: str, clients: int, n: int, seconds: float, gaps: list) -> tuple[float, list[float]]:
    """`clients` clients for `seconds`, each sending its next request as soon as its last one ends
    (a closed loop, as users of a service do): (bytes/s that arrived in the window, first-byte
    times); the gaps between chunks go to `gaps`."""
    deadline, ttfb = time.perf_counter() + seconds, []

    async def user(i: int) -> int:
        size, k = 0, 0
        while time.perf_counter() < deadline:
            size += await stream(client, url, i + 1000 * k, n, deadline, ttfb, gaps)
            k += 1
        return size

    return sum(await asyncio.gather(*(user(i) for i in range(clients)))) / seconds, ttfb


async def rounds(url: str, n: int, cycles: int, seconds: float, model: str, ceiling: float) -> None:
    """The levels interleave, cycle after cycle, so a slow spell of a shared machine hits them all;
    each level's figure is its median over the cycles, and each ratio the median of per-cycle ratios."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as client:
        await asyncio.gather(*(stream(client, url, i, 8) for i in range(32)))  # warm-up
        rates, ttfb, gaps = ({c: [] for c in LEVELS} for _ in range(3))
        for _ in range(cycles):
            for clients in LEVELS:
                rate, first = await level(client, url, clients, n, seconds, gaps[clients])
                rates[clients].append(rate)
                ttfb[clients] += first
        for clients in LEVELS:
            ratio = statistics.median(r / one for r, one in zip(rates[clients], rates[1]))
            t, g, rate = sorted(ttfb[clients]), sorted(gaps[clients]), statistics.median(rates[clients])
            print(f"{model} clients {clients:>2}: {rate:8,.0f} bytes/s ({100 * rate / ceiling:4.1f} % of the "
                  f"ceiling; {ratio:4.1f}x one client; cycles {min(rates[clients]):,.0f}-{max(rates[clients]):,.0f}) | "
                  f"TTFB p50 {_p(t, 0.5):6.1f} ms p99 {_p(t, 0.99):6.1f} ms | chunk gap p99 {_p(g, 0.99):5.1f} ms",
                  flush=True)


def _p(values: list[float], q: float) -> float:
    """The q-quantile of sorted seconds, in ms (nan if none)."""
    return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else float("nan")


def ceiling(model: str, reps: int = 15) -> float:
    """The bare batch-32 step's rows x steps/s at one onnxruntime thread (its fastest of `reps`
    runs): the bytes/s a one-thread server could deliver at 32 clients with a free loop."""
    from micromixer_edge.runtime.model import MixerModel
    stepper, best = MixerModel(model, threads=1).stepper(32), float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(100):
            stepper.step([65] * 32)
        best = min(best, (time.perf_counter() - t0) / 100)
    return 32 / best


def raw_ratio(model: str, reps: int = 15) -> float:
    """rows x bytes/s of the bare IO-bound step at batch 32 over batch 1, each timed as its fastest
    of `reps` interleaved runs (the least disturbed): what batching the model call alone gives,
    with no sampling, text or HTTP."""
    from micromixer_edge.runtime.model import MixerModel
    m = MixerModel(model)
    steppers, best = {b: m.stepper(b) for b in (1, 32)}, {1: float("inf"), 32: float("inf")}
    for _ in range(reps):
        for b, st in steppers.items():
            t0 = time.perf_counter()
            for _ in range(100):
                st.step([65] * b)
            best[b] = min(best[b], (time.perf_counter() - t0) / b)
    return best[1] / best[32]


def bench(model: str, n: int, cycles: int, seconds: float, threads: int) -> None:
    top = ceiling(model)
    print(f"{model}: ceiling {top:,.0f} bytes/s (the bare batch-32 step, one thread); server --threads {threads}")
    proc = subprocess.Popen([sys.executable, *SERVER, model, "--port", "0", "--no-access-log",
                             "--threads", str(threads)], stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
    try:
        asyncio.run(rounds(url, n, cycles, seconds, model, top))
        hwm = [ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmHWM")][0].split()[1]
        print(f"{model}: server peak RSS {int(hwm) / 1024:.1f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"{model}: the bare model step, batch 32 over batch 1: {raw_ratio(model):.1f}x rows x bytes/s")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--bytes", type=int, default=200)
    p.add_argument("--cycles", type=int, default=5, help="times each level runs, interleaved")
    p.add_argument("--seconds", type=float, default=2.0, help="how long each level runs in a cycle")
    p.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads")
    a = p.parse_args()
    print("cpu flags:", kernel_flags())
    for m in a.models:
        bench(m, a.bytes, a.cycles, a.seconds, a.threads)
