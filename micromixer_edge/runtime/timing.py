"""Small timing helpers shared by the report, the benchmark and the self-test."""
from __future__ import annotations

import statistics
import time

from .model import MixerModel


def step_seconds(model: MixerModel, tokens: int = 256, repeats: int = 5, warmup: int = 32) -> list[float]:
    """Seconds per single-token step (batch 1), one value per repeat of `tokens` steps."""
    state = model.new_state()
    for _ in range(warmup):
        _, state = model.step([65], state)
    out = []
    for _ in range(repeats):
        state = model.new_state()
        t0 = time.perf_counter()
        for t in range(tokens):
            _, state = model.step([32 + t % 90], state)
        out.append((time.perf_counter() - t0) / tokens)
    return out


def step_tokens_per_s(model: MixerModel, tokens: int = 256, repeats: int = 5) -> float:
    return 1.0 / statistics.median(step_seconds(model, tokens, repeats))
