"""Bits per byte of a model on a text, under a context mode."""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ..codec import encode_story
from .context import sequence_logits
from .logprobs import log_softmax
from .model import MixerModel


@dataclasses.dataclass
class EvalResult:
    bits_per_byte: float  # mean -log2 p over every predicted token (each byte, and the eos)
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def story_nats(model: MixerModel, story: bytes, mode: str) -> tuple[float, int]:
    """Total next-token loss (nats) of [bos] + story + [eos], and the count of predicted tokens."""
    ids = encode_story(story)
    logits = sequence_logits(model, ids[:-1], mode)  # (T-1, V)
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1


def bits_per_byte(model: MixerModel, stories: list[bytes], mode: str) -> EvalResult:
    t0, nats, count = time.perf_counter(), 0.0, 0
    for story in stories:
        n, c = story_nats(model, story, mode)
        nats, count = nats + n, count + c
    return EvalResult(nats / count / math.log(2), count, time.perf_counter() - t0)
