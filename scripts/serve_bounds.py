"""What a hostile but valid request costs mixer-serve at its default limits (issue 26): /health's
worst wait, a running stream's worst gap, answer sizes and the server's RSS (peak: VmHWM).

    python scripts/serve_bounds.py MODEL.onnx [--flag value ...]   # extra flags go to mixer-serve

Cases: the issue's 136-byte chat request (n 32 x 4,096 bytes x 20 alternatives); the largest chat
answer allowed; answers in flight up to --answers-in-flight-mb (12 such requests at once); 30
window-mode rows beside a 100-byte halve request (and the watched stream: 32 rows).
"""
import concurrent.futures
import re
import subprocess
import sys
import threading
import time

import httpx

CHAT = {"messages": [{"role": "user", "content": "Once"}], "max_tokens": 4096, "logprobs": True,
        "top_logprobs": 20, "ignore_eos": True}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1)) / 1024


class Watch:
    """/health every 50 ms and one stream's chunk gaps, while a case runs."""

    def __init__(self, url):
        self.url, self.health, self.gap, self._stop = url, 0.0, 0.0, threading.Event()

    def __enter__(self):
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._poll, self._stream)]
        for t in self._threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()

    def _poll(self):
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                c.get(self.url + "/health")
                self.health = max(self.health, time.perf_counter() - t0)
                time.sleep(0.05)

    def _stream(self):
        body = {"prompt": "The dog", "max_tokens": 4096, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as c, c.stream("POST", self.url + "/v1/completions", json=body) as r:
            last = time.perf_counter()
            for _ in r.iter_lines():
                now = time.perf_counter()
                self.gap, last = max(self.gap, now - last), now
                if self._stop.is_set():
                    return


def case(name, url, pid, fn):
    with Watch(url) as w:
        t0 = time.perf_counter()
        what = fn()
        took = time.perf_counter() - t0
    print(f"| {name} | {what} | {took:.2f} s | {w.health * 1000:.0f} ms | {w.gap * 1000:.0f} ms | "
          f"{rss_mb(pid):.0f} MB | {rss_mb(pid, 'VmHWM'):.0f} MB |")


def main(model, *flags):
    proc = subprocess.Popen([sys.executable, "-m", "micromixer_edge.serve.cli", model, "--port", "0",
                             "--no-access-log", *flags],
                            stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
    post = lambda path, body: httpx.post(url + path, json=body, timeout=300)  # noqa: E731
    try:
        print(f"idle RSS {rss_mb(proc.pid):.0f} MB\n")
        print("| case | answer | time | /health worst | stream gap worst | RSS after | RSS peak |\n|---|---|---|---|---|---|---|")
        big = lambda: post("/v1/chat/completions", {**CHAT, "n": 32}).status_code  # noqa: E731
        case("n 32 x 4,096 x top_logprobs 20 (chat)", url, proc.pid, big)
        one = lambda: f"{len(post('/v1/chat/completions', CHAT).content) / 2**20:.1f} MB"  # noqa: E731
        case("the largest chat answer allowed", url, proc.pid, one)

        def flight():
            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(lambda _: post("/v1/chat/completions", CHAT).status_code, range(12)))
            return f"{codes.count(200)} x 200, {codes.count(429)} x 429"
        case("12 of them at once", url, proc.pid, flight)

        def halve():
            t0 = time.perf_counter()
            post("/v1/completions", {"prompt": "x" * 300, "max_tokens": 100, "temperature": 0, "ignore_eos": True})
            return time.perf_counter() - t0
        alone = min(halve() for _ in range(3))

        def beside_window():
            # 30: with the watched stream and the halve request, the 32 rows of --max-batch
            window = {"prompt": "x" * 300, "n": 30, "max_tokens": 4096, "ignore_eos": True, "context": "window",
                      "stream": True}
            with httpx.Client(timeout=120) as c, c.stream("POST", url + "/v1/completions", json=window) as r:
                lines = r.iter_lines()
                for _ in range(40):
                    next(lines)
                took = halve()
            return f"100 halve bytes {took * 1000:.0f} ms (alone {alone * 1000:.0f} ms, {took / alone:.1f}x)"
        case("30 window rows + the stream + 1 halve", url, proc.pid, beside_window)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main(*sys.argv[1:])
