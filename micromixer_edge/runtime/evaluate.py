"""Bits per byte of a model on a text, under a context mode."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..format import BOS_ID, EOS_ID
from .context import Context
from .model import MixerModel


def read_stories(path: str | Path) -> list[bytes]:
    """Stories of a UTF-8 text file, separated by blank lines."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    data = path.read_bytes().replace(b"\r\n", b"\n")
    stories = [s.strip() for s in data.split(b"\n\n")]
    stories = [s for s in stories if s]
    if not stories:
        raise ValueError(f"{path}: no text found (stories are separated by blank lines)")
    return stories


def encode_story(story: bytes) -> np.ndarray:
    """A story as the model was trained on it: [bos] + utf8 + [eos], int64."""
    return np.frombuffer(bytes([BOS_ID]) + story + bytes([EOS_ID]), np.uint8).astype(np.int64)


@dataclasses.dataclass
class EvalResult:
    bits_per_byte: float  # mean -log2 p over every predicted token (each byte, and the eos)
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def story_nats(model: MixerModel, story: bytes, mode: str) -> tuple[float, int]:
    """Total next-token loss (nats) of [bos] + story + [eos], and the count of predicted tokens."""
    ids = encode_story(story)
    logits = Context(model, 1, mode).feed_sequence(ids[:-1])  # (T-1, V)
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1


def bits_per_byte(model: MixerModel, stories: list[bytes], mode: str) -> EvalResult:
    t0, nats, count = time.perf_counter(), 0.0, 0
    for story in stories:
        n, c = story_nats(model, story, mode)
        nats, count = nats + n, count + c
    return EvalResult(nats / count / math.log(2), count, time.perf_counter() - t0)
