"""What the web target costs and weighs (issue 31): bytes/s in headless Chromium against mixer-run's
single stream, one thread and with threads, and what a browser transfers.

    python scripts/web_bench.py FLOAT.onnx INT8.onnx [--bytes 3000] [--repeats 5] [--threads 2]

Each model is packed (mixer-pack --target web), served by its serve.py (with the COOP/COEP
headers for the threaded runs), and generates --bytes greedy bytes in unbounded mode from one
prompt, --repeats times after the page's warm-up; mixer-run's figure is the same generation with
the Python runtime (one onnxruntime thread). Medians. Transfer: each file gzipped at level 6 (a
server's usual compression; the .wasm is shipped gzipped already).
"""
import argparse
import gzip
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import Browser  # noqa: E402 - the suite's DevTools driver

from micromixer_edge.pack.web import make_web  # noqa: E402
from micromixer_edge.runtime.cpu import kernel_flags  # noqa: E402
from micromixer_edge.runtime.engine import GenerateOptions, GenerationStats  # noqa: E402
from micromixer_edge.runtime.generate import generate  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402

PROMPT = "Once upon a time"


def python_bytes_per_second(model_path, n, repeats) -> float:
    model, rates = MixerModel(model_path), []
    for _ in range(repeats + 1):
        stats = GenerationStats()
        generate(model, PROMPT, GenerateOptions.of(max_new_tokens=n, temperature=0, context="unbounded"), stats)
        rates.append(stats.tokens_per_s)
    return statistics.median(rates[1:])


def page_bytes_per_second(browser, folder, n, repeats, threads) -> tuple[float, int]:
    isolate = threads > 1
    server = subprocess.Popen([sys.executable, str(folder / "serve.py"), "--port", "0",
                               *([] if isolate else ["--no-isolation"])], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        browser.goto(f"{url}?threads={threads}")
        got = browser.eval("micromixer.ready.then(r => r.threads)")
        rates = [browser.eval(f"micromixer.generate({{prompt: '{PROMPT}', max_tokens: {n}, temperature: 0, "
                              f"context: 'unbounded'}}).then(r => r.bytes_per_second)") for _ in range(repeats)]
        return statistics.median(rates), got
    finally:
        server.kill()
        server.wait()


def transfer(folder: Path) -> tuple[int, int]:
    """(bytes a browser loads, bytes it transfers with gzip level 6 where that helps)."""
    disk = wire = 0
    for f in folder.iterdir():
        if f.name in ("run.mjs", "serve.py", "package.json", ".npmrc"):
            continue  # (Node's and the host's; a browser never asks for them)
        data = f.read_bytes()
        disk += len(data)
        wire += len(data) if f.suffix == ".gz" else min(len(data), len(gzip.compress(data, 6)))
    return disk, wire


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--bytes", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="the threaded runs' onnxruntime-web threads")
    a = p.parse_args()
    print("cpu flags:", kernel_flags())
    print(f"{'model':<12} {'python B/s':>10} {'page 1t':>8} {'ratio':>6} {'page ' + str(a.threads) + 't':>8} "
          f"{'loads MB':>9} {'transfer MB':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        browser = Browser(Path(tmp) / "profile")
        try:
            for m in a.models:
                folder = make_web(m, Path(tmp) / Path(m).stem)
                py = python_bytes_per_second(m, a.bytes, a.repeats)
                one, _ = page_bytes_per_second(browser, folder, a.bytes, a.repeats, 1)
                many, got = page_bytes_per_second(browser, folder, a.bytes, a.repeats, a.threads)
                disk, wire = transfer(folder)
                print(f"{Path(m).name:<12} {py:>10.0f} {one:>8.0f} {py / one:>5.2f}x {many:>8.0f} "
                      f"{disk / 2**20:>9.2f} {wire / 2**20:>11.2f}" + ("" if got == a.threads else f" ({got} threads)"))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
