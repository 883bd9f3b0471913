"""An on-device self-test: every export stores a prompt and the greedy bytes the exporting machine
produced for that very file; `mixer-run MODEL --selftest` regenerates them and compares."""
from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np

from ..format import BOS_ID
from .context import Context
from .model import MixerModel, ort


def backend_version(model: MixerModel) -> str:
    return f"onnxruntime {ort.__version__}" if model.backend == "onnxruntime" else f"numpy {np.__version__}"

SELFTEST_KEY = "selftest"  # field of the metadata JSON
PROMPT = "Once upon a time"
TOKENS = 64


def greedy_ids(model: MixerModel, prompt: str, tokens: int, mode: str = "window") -> list[int]:
    """Raw argmax continuation (pad/bos not banned); window mode is the original's semantics."""
    ctx = Context(model, 1, mode)
    logits, out = ctx.feed_sequence([BOS_ID, *prompt.encode("utf-8")])[-1], []
    for _ in range(tokens):
        out.append(int(np.argmax(logits)))
        logits = ctx.feed(out[-1:])[0]
    return out


def make_vector(model: MixerModel, prompt: str = PROMPT, tokens: int = TOKENS) -> dict:
    return {"prompt": prompt, "greedy_ids": greedy_ids(model, prompt, tokens),
            "machine": platform.machine(), "backend": backend_version(model)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        for key in ("Model", "model name", "Hardware"):
            if key in info:
                return info[key]
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclasses.dataclass
class SelftestResult:
    passed: bool
    matched: int      # leading ids equal to the stored vector
    expected: int
    tokens_per_s: float
    cpu: str
    backend: str

    def line(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL (first {self.matched} of {self.expected} bytes match)"
        return f"selftest {verdict} | {self.tokens_per_s:,.0f} tokens/s | cpu: {self.cpu} | {self.backend}"


def run_selftest(model: MixerModel) -> SelftestResult:
    vector = model.meta.get(SELFTEST_KEY)
    if not vector:
        raise ValueError(f"{model.path} has no self-test vector; re-export it with this version")
    want = vector["greedy_ids"]
    t0 = time.perf_counter()
    got = greedy_ids(model, vector["prompt"], len(want))
    rate = len(want) / (time.perf_counter() - t0)
    matched = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    return SelftestResult(got == want, matched, len(want), rate, cpu_name(), backend_version(model))
