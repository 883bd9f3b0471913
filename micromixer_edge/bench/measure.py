"""mixer-bench: what a user will see, measured in one run (warm-up, repeats, median and spread).

Needs torch only for `reference`: the original MicroMixer-1 generate, which recomputes the last
window for every new token.
"""
from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..codec import encode_prompt
from ..runtime.engine import GenerateOptions, GenerationStats
from ..runtime.generate import generate, stream
from ..runtime.model import MixerModel
from ..runtime.sampling import SamplingParams

PROMPT = "Once upon a time"
NEW_TOKENS = 240


@dataclasses.dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values) -> "Stat":
        return cls(statistics.median(values), min(values), max(values))

    def __str__(self) -> str:
        return f"{self.median:,.1f} [{self.low:,.1f}-{self.high:,.1f}]"


def repeat(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def decode_tokens_per_s(model: MixerModel, tokens: int = NEW_TOKENS) -> float:
    """Greedy single-stream decoding through mixer-run's own loop (`generate`, default context
    mode, sampler, UTF-8 stream): new tokens over the time after the prompt's prefill."""
    options = GenerateOptions(max_new_tokens=tokens, sampling=SamplingParams(temperature=0, ignore_eos=True))
    stats = GenerationStats()
    generate(model, PROMPT, options, stats)
    return stats.tokens_per_s


LONG_RUNS = [("halve", "halve", 0.0), ("unbounded", "unbounded", 0.0), ("halve_t0.8", "halve", 0.8)]


def long_decode(model: MixerModel, mode: str, tokens: int = 3000, temperature: float = 0) -> tuple[float, float]:
    """Decoding of `tokens` bytes in a context mode, past several W boundaries, greedy or at a
    temperature with the default filters (seed 0): (bytes/s over the whole run, the longest gap
    in ms between two consecutive pieces of text)."""
    sampling = SamplingParams(temperature=temperature, ignore_eos=True)
    options = GenerateOptions(max_new_tokens=tokens, sampling=sampling, context=mode, seed=0)
    t0 = last = time.perf_counter()
    gap = 0.0
    for _ in stream(model, PROMPT, options):
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    return tokens / (last - t0), gap * 1e3


def prefill_ms(model: MixerModel) -> float:
    ids = (np.arange(model.max_seq_len) % 90 + 32)[None]
    t0 = time.perf_counter()
    model.prefill(ids)
    return (time.perf_counter() - t0) * 1e3


def batch_tokens_per_s(model: MixerModel, batch: int, steps: int = 64) -> float:
    stepper = model.stepper(batch)
    tokens = np.full(batch, 65)
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.step(tokens)
    return batch * steps / (time.perf_counter() - t0)


# Runs mixer-run, then reports the process's own peak RSS (VmHWM). getrusage/wait4 would count
# the pages of this (large) parent process inherited at fork, which Linux keeps across exec.
_RUNNER = """
import atexit, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("VmHWM " + line.split()[1] + "\\n")
atexit.register(hwm)
sys.argv = ["mixer-run"] + sys.argv[1:]
from micromixer_edge.runtime.cli import main
main()
"""


def runner_process(path: str, tokens: int, threads: int = 1) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a fresh `mixer-run` process: interpreter, imports, load, decode."""
    cmd = [sys.executable, "-c", _RUNNER, path, "-p", PROMPT, "-n", str(tokens),
           "--temperature", "0", "--ignore-eos", "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM ")]
    if proc.returncode != 0 or not hwm:
        raise RuntimeError(f"mixer-run failed on {path}: {proc.stderr[:200]}")
    return wall, int(hwm[-1]) / 1024


def reference_tokens_per_s(checkpoint: str, tokens: int = NEW_TOKENS, threads: int | None = None) -> float:
    """The original generate: logits of the whole last window for every new token (PyTorch),
    with torch's default thread count unless `threads` is given."""
    import torch
    from ..export.checkpoint import load_checkpoint
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    model = load_checkpoint(checkpoint).model
    idx = torch.tensor([encode_prompt(PROMPT)])  # the same [bos] + bytes as mixer-run
    W = model.config.max_seq_len
    with torch.no_grad():
        model(idx)  # warm-up
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits = model(idx[:, -W:])[:, -1]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    rate = tokens / (time.perf_counter() - t0)
    torch.set_num_threads(default_threads)
    return rate


def bench_model(path: str, threads: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    model = MixerModel(path, 1)
    load_s = time.perf_counter() - t0
    many = MixerModel(path, threads) if threads > 1 else model
    cold = [runner_process(path, 1) for _ in range(repeats)]
    result = {
        "model": path, "file_mb": Path(path).stat().st_size / 1e6,
        "quantization": model.meta["quantization"], "load_ms": load_s * 1e3,
        "decode_tokens_per_s_1t": Stat.of(repeat(lambda: decode_tokens_per_s(model), repeats)),
        f"decode_tokens_per_s_{threads}t": Stat.of(repeat(lambda: decode_tokens_per_s(many), repeats)),
        "prefill_window_ms": Stat.of(repeat(lambda: prefill_ms(model), repeats, warmup=2)),
        "cold_start_ms": Stat.of([c[0] * 1e3 for c in cold]),
        "peak_rss_mb": max(runner_process(path, NEW_TOKENS)[1] for _ in range(2)),
    }
    runs = {name: [long_decode(model, mode, temperature=t) for _ in range(repeats)]
            for name, mode, t in LONG_RUNS}
    for name, r in runs.items():  # 3000 bytes: halve passes W many times
        result[f"decode_3000_{name}_tokens_per_s"] = Stat.of([x[0] for x in r])
        result[f"decode_3000_{name}_longest_gap_ms"] = max(x[1] for x in r)
    for b in (1, 8, 64):
        result[f"batch{b}_tokens_per_s"] = Stat.of(repeat(lambda: batch_tokens_per_s(many, b), repeats))
    step_ms = 1e3 / result["decode_tokens_per_s_1t"].median
    result["prefill_over_step"] = result["prefill_window_ms"].median / step_ms
    return result
