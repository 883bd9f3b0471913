"""Small timing helpers shared by the quantization report and the benchmark."""
from __future__ import annotations

import statistics
import time

from .model import MixerModel


def _step_seconds(stepper, tokens: int, batch: int) -> float:
    t0 = time.perf_counter()
    for t in range(tokens):
        stepper.step([32 + t % 90] * batch)
    return (time.perf_counter() - t0) / tokens


def step_tokens_per_s(models: list[MixerModel], tokens: int = 256, repeats: int = 7, batch: int = 1) -> list[float]:
    """Decode steps per second of each model, `batch` rows a step (1: as mixer-run steps).

    The models are timed in turns, repeat after repeat, so that a noisy machine slows them alike;
    the median of the repeats is returned.
    """
    steppers = [m.stepper(batch) for m in models]
    for s in steppers:  # warm-up
        _step_seconds(s, 32, batch)
    times = [[] for _ in models]
    for _ in range(repeats):
        for s, out in zip(steppers, times):
            out.append(_step_seconds(s, tokens, batch))
    return [1.0 / statistics.median(t) for t in times]
