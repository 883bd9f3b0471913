"""An on-device self-test: every export stores a prompt and the greedy bytes the exporting machine
produced for that very file; `mixer-run MODEL --selftest` regenerates them and compares."""
from __future__ import annotations

import dataclasses
import platform
import time

import numpy as np

from ..errors import MixerError
from ..format import NEEDS_DOT_PRODUCT
from .engine import Engine, GenerateOptions
from .model import MixerModel, ort
from .cpu import cpu_flags, cpu_name
from .sampling import SamplingParams


def backend_version(model: MixerModel) -> str:
    return f"onnxruntime {ort.__version__}" if model.backend == "onnxruntime" else f"numpy {np.__version__}"

SELFTEST_KEY = "selftest"  # field of the metadata JSON
PROMPT = "Once upon a time"
TOKENS = 64


def greedy_ids(model: MixerModel, prompt: str, tokens: int, mode: str = "window") -> list[int]:
    """The greedy continuation's ids (eos does not stop it), through the engine; window mode is
    the original's semantics."""
    options = GenerateOptions(max_new_tokens=tokens, sampling=SamplingParams(temperature=0, ignore_eos=True),
                              context=mode)
    engine = Engine(model)
    row = engine.add(prompt, options)
    for _ in engine.run():
        pass
    return row.stats.ids


def make_vector(model: MixerModel, prompt: str = PROMPT, tokens: int = TOKENS) -> dict:
    return {"prompt": prompt, "greedy_ids": greedy_ids(model, prompt, tokens),
            "machine": platform.machine(), "backend": backend_version(model)}


def slow_path_note(model: MixerModel) -> str | None:
    """On an Arm CPU without the int8 dot product (a Pi 4's Cortex-A72), onnxruntime has no 8-bit
    MatMulNBits kernel and dequantizes every weight on every call: say so, and what to use."""
    scheme = model.meta["quantization"]
    if scheme not in NEEDS_DOT_PRODUCT or model.backend != "onnxruntime":
        return None
    if platform.machine() not in ("aarch64", "arm64") or "asimddp" in cpu_flags():
        return None
    return (f"note: this CPU has no int8 dot product (e.g. Raspberry Pi 4), so onnxruntime runs "
            f"{scheme} on a slow fallback; for this board quantize with: mixer-quantize MODEL.onnx "
            "--target pi4 (int8: MLAS's NEON integer kernel)")


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
        raise MixerError(f"{model.path} has no self-test vector; re-export it with this version")
    want = vector["greedy_ids"]
    t0 = time.perf_counter()
    got = greedy_ids(model, vector["prompt"], len(want))
    rate = len(want) / (time.perf_counter() - t0)
    matched = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    return SelftestResult(got == want, matched, len(want), rate, cpu_name(), backend_version(model))
