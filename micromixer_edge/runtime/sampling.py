"""Byte-level sampling: temperature, top-k, top-p, min-p, repetition penalty; seeded RNG.

The generator is Python's Mersenne Twister (`random.Random`), seeded by the user: the same arguments
and seed give the same bytes on any machine (up to float rounding in the logits themselves). Not
numpy's Generator: importing numpy.random adds ~6.6 MB to a runner's resident memory.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np

from ..format import MixerError, BOS_ID, EOS_ID, PAD_ID


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8     # 0 = greedy argmax
    top_k: int = 40              # 0 = off
    top_p: float = 0.95          # 1 = off
    min_p: float = 0.05          # 0 = off; keep bytes with p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1 = off; CTRL-style, over the last `repeat_last_n` tokens
    repeat_last_n: int = 64
    ignore_eos: bool = False

    def __post_init__(self):
        checks = [(self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top-k must be >= 0 (0 turns it off)"),
                  (0 < self.top_p <= 1, "top-p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "min-p must be in [0, 1]"),
                  (self.repetition_penalty > 0, "repetition penalty must be > 0"),
                  (self.repeat_last_n >= 0, "repeat-last-n must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise MixerError(message)


class Sampler:
    """Turns next-byte logits into bytes, one row at a time."""

    def __init__(self, params: SamplingParams, seed: int | None = None, vocab_size: int = 256):
        self.params = params
        self.rng = random.Random(seed)
        banned = [PAD_ID, BOS_ID] + ([EOS_ID] if params.ignore_eos else [])
        self._banned = np.array(banned)
        self._mask = np.zeros(vocab_size, np.float32)  # added to logits: -inf where banned
        self._mask[self._banned] = -np.inf
        self._allowed = (self._mask == 0).tolist()  # by id, for the greedy fast path
        self._plain_greedy = params.temperature == 0 and params.repetition_penalty == 1.0

    def _penalize(self, logits: np.ndarray, recent) -> None:
        p = self.params
        if p.repetition_penalty == 1.0 or not p.repeat_last_n or not len(recent):
            return
        seen = np.unique(np.asarray(recent[-p.repeat_last_n:], dtype=np.int64))
        vals = logits[seen]
        logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)

    def sample(self, logits: np.ndarray, recent=()) -> int:
        """One byte from a (V,) logit row; `recent` are the row's latest tokens (for the penalty)."""
        p = self.params
        if self._plain_greedy:  # the hot path of greedy decoding: argmax, masked only if banned
            best = int(logits.argmax())
            return best if self._allowed[best] else int(np.argmax(logits + self._mask))
        logits = logits.astype(np.float64)  # a private copy; float64 keeps softmax stable
        logits[self._banned] = -np.inf
        self._penalize(logits, recent)
        if p.temperature == 0:
            return int(np.argmax(logits))
        logits /= p.temperature
        order = np.argsort(-logits, kind="stable")  # most likely first
        if p.top_k:
            order = order[:p.top_k]
        probs = np.exp(logits[order] - logits[order[0]])
        probs /= probs.sum()
        keep = len(probs)
        if p.top_p < 1.0:  # smallest prefix whose mass reaches top_p
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
        if p.min_p > 0:
            keep = min(keep, int((probs >= p.min_p * probs[0]).sum()))
        probs = probs[:max(keep, 1)]
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(order[min(i, len(probs) - 1)])
