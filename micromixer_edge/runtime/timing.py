"""Small timing helpers shared by the quantization report and the benchmark."""
from __future__ import annotations

import statistics
import time

from .model import MixerModel


def _step_seconds(stepper, tokens: int) -> float:
    t0 = time.perf_counter()
    for t in range(tokens):
        stepper.step((32 + t % 90,))
    return (time.perf_counter() - t0) / tokens


def step_tokens_per_s(models: list[MixerModel], tokens: int = 256, repeats: int = 7) -> list[float]:
    """Single-token decode steps per second (batch 1, as mixer-run steps) of each model.

    The models are timed in turns, repeat after repeat, so that a noisy machine slows them alike;
    the median of the repeats is returned.
    """
    steppers = [m.stepper(1) for m in models]
    for s in steppers:  # warm-up
        _step_seconds(s, 32)
    times = [[] for _ in models]
    for _ in range(repeats):
        for s, out in zip(steppers, times):
            out.append(_step_seconds(s, tokens))
    return [1.0 / statistics.median(t) for t in times]
