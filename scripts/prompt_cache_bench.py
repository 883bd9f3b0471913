"""Time to first byte of a shared document plus a short question through mixer-serve: cold (the
document never seen), warm (seen with another question: the prompt cache resumes from its last
FOLD_CHUNK multiple), and the exact prompt again; with the cache on and off (--prompt-cache-mb 0).
Each trial takes a fresh document (TinyStories text at another offset), so every cold is cold.

    python scripts/prompt_cache_bench.py MODEL.onnx [--kb 20] [--trials 7] [--modes unbounded,halve]
"""
import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from micromixer_edge.codec import read_stories

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories" / "train.txt"
QUESTIONS = ("\n\nQuestion: Who is in the story?\nAnswer:", "\n\nQuestion: What happened at the end?\nAnswer:")


def ttfb(url: str, prompt: str, mode: str) -> tuple[float, int]:
    """Seconds from sending the request to the first text chunk, and the cached tokens the usage
    reports. A raw socket, so that no client's own setup is counted (httpx.stream builds a client,
    SSL context and all, at each call: ~25 ms here; the openai client, which keeps one, 4-5 ms)."""
    body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True, "context": mode,
                       "stream_options": {"include_usage": True}}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0, first, data = time.perf_counter(), None, b""
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        while b"data: [DONE]" not in data:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise SystemExit(f"the server closed the connection: {data[-300:]!r}")
            data += chunk
            if first is None and re.search(rb'"text": "[^"]', data):
                first = time.perf_counter() - t0
    return first, int(re.search(rb'"cached_tokens": (\d+)', data).group(1))


def serve(model: str, *flags: str):
    proc = subprocess.Popen([sys.executable, "-m", "micromixer_edge.serve.cli", model, "--port", "0",
                             "--max-prompt-bytes", "200000", "--no-access-log", *flags], stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline()).group(0)
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--modes", default="unbounded,halve")
    a = ap.parse_args()
    text = "\n\n".join(s.decode("utf-8", "replace") for s in read_stories(DATA))
    size = a.kb * 1000
    for flags in ([], ["--prompt-cache-mb", "0"]):
        proc, url = serve(a.model, *flags)
        try:
            ttfb(url, "Warm up.", "halve")
            for mode in a.modes.split(","):
                rows = {"cold": [], "warm": [], "same": []}
                for t in range(a.trials):
                    doc = text[(t + 1) * size:(t + 2) * size]
                    for name, q in (("cold", QUESTIONS[0]), ("warm", QUESTIONS[1]), ("same", QUESTIONS[1])):
                        rows[name].append(ttfb(url, doc + q, mode))
                med = {k: statistics.median(s for s, _ in v) * 1e3 for k, v in rows.items()}
                cached = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
                print(f"cache {'off' if flags else 'on '} {mode:9s} {a.kb} KB + question: TTFB median of "
                      f"{a.trials}: cold {med['cold']:.1f} ms, warm {med['warm']:.1f} ms "
                      f"({med['cold'] / med['warm']:.1f}x), same prompt {med['same']:.1f} ms "
                      f"({med['cold'] / med['same']:.1f}x); cached tokens {cached['cold']:.0f} / "
                      f"{cached['warm']:.0f} / {cached['same']:.0f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(20)


if __name__ == "__main__":
    main()
