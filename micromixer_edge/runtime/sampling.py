"""Byte-level sampling: temperature, min-p, top-k, top-p, repetition penalty; seeded RNG.

One code path for one row and for many: `sample_rows` turns a (B, V) block of logits into one byte
per row, and a row's byte does not depend on the other rows. Every operation is elementwise or
runs along the row alone (max, exp, a stable sort of the row's own candidates, a cumulative sum in
order), so a row gets the same bits in any batch; a test checks it against rows sampled alone.

The filters act in this order, each on what the previous one kept: temperature, then min-p (bytes
with p >= min_p * p_max; applied first because it needs no sort, and it keeps a most-likely prefix
anyway), then top-k, then top-p (the smallest most-likely prefix whose mass reaches top_p of what
is left). The generator is Python's Mersenne Twister (`random.Random`), seeded by the user, one
draw per sampled byte: the same arguments and seed give the same bytes on any machine (up to float
rounding in the logits themselves). Not numpy's Generator: importing numpy.random adds ~6.6 MB to
a runner's resident memory.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import random

import numpy as np

from ..errors import MixerError
from ..format import BOS_ID, EOS_ID, PAD_ID

BANNED = (PAD_ID, BOS_ID)  # never sampled; eos too when ignore_eos (banned_ids)


MIN_PENALTY = 0.01  # logits over a smaller penalty could overflow to inf
TINY_TEMPERATURE = 1e-30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8     # 0 = greedy argmax
    top_k: int = 40              # 0 = off
    top_p: float = 0.95          # 1 = off
    min_p: float = 0.05          # 0 = off; keep bytes with p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1 = off; CTRL-style, over the last `repeat_last_n` tokens
    repeat_last_n: int = 64
    ignore_eos: bool = False
    presence_penalty: float = 0.0    # OpenAI's: minus this from every byte generated so far
    frequency_penalty: float = 0.0   # OpenAI's: minus this times how often it was generated
    logit_bias: tuple = ()           # ((byte, bias), ...): added to those bytes' logits

    def __post_init__(self):
        checks = [(self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top-k must be >= 0 (0 turns it off)"),
                  (0 < self.top_p <= 1, "top-p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "min-p must be in [0, 1]"),
                  (self.repetition_penalty >= MIN_PENALTY, f"repetition penalty must be >= {MIN_PENALTY}"),
                  (self.repeat_last_n >= 0, "repeat-last-n must be >= 0"),
                  (-2 <= self.presence_penalty <= 2, "presence penalty must be in [-2, 2]"),
                  (-2 <= self.frequency_penalty <= 2, "frequency penalty must be in [-2, 2]"),
                  (all(0 <= int(t) < 256 and -100 <= b <= 100 for t, b in self.logit_bias),
                   "logit bias: bytes 0-255, biases in [-100, 100]")]
        for ok, message in checks:
            if not ok:
                raise MixerError(message)


def banned_ids(params: "SamplingParams") -> tuple[int, ...]:
    """The ids a row may never sample: pad and bos always; eos too when the row ignores it (it
    would otherwise end the row, or with ignore_eos be written into the text as byte 2). The one
    place this is decided: the greedy shortcut and the batch sampler both use it."""
    return BANNED + ((EOS_ID,) if params.ignore_eos else ())


def seed_value(seed: int | None) -> int | None:
    """The generator's seed: random.Random seeds with |seed|, so -5 and 5 would draw the same
    bytes; seeds are taken modulo 2**64 instead (the same for every seed in [0, 2**64))."""
    return None if seed is None else seed % 2**64


class Sampler:
    """One row's sampling parameters and seeded generator."""

    def __init__(self, params: SamplingParams, seed: int | None = None, vocab_size: int = 256):
        self.params = params
        self.rng = random.Random(seed_value(seed))
        self.banned = list(banned_ids(params))
        self._allowed = [i not in self.banned for i in range(vocab_size)]  # by id, for the greedy fast path
        self.penalized = params.repetition_penalty != 1.0 and params.repeat_last_n > 0
        self.counted = bool(params.presence_penalty or params.frequency_penalty)
        self.counts: dict[int, int] = {}  # byte -> times generated (for presence and frequency)
        self._penalty = np.zeros(vocab_size) if self.counted else None  # (V,) what those take off
        self.bias = (np.array([int(t) for t, _ in params.logit_bias], np.int64),
                     np.array([b for _, b in params.logit_bias], np.float64)) if params.logit_bias else None
        self.adjusts = self.penalized or self.counted or self.bias is not None
        self.plain_greedy = params.temperature == 0 and not self.adjusts
        self.top_k = params.top_k or vocab_size
        # 0 is greedy; any other temperature at least TINY_TEMPERATURE, so that (x - max) / T never
        # overflows (it is greedy all the same: every other byte's log-probability is -1e30 or less)
        self.temperature = max(params.temperature, TINY_TEMPERATURE) if params.temperature else 0.0
        self.log_min_p = math.log(params.min_p) if params.min_p > 0 else -1e308  # > -inf: never banned bytes

    def sample(self, logits: np.ndarray, recent=()) -> int:
        """One byte from a (V,) logit row; `recent` are the row's latest tokens (for the penalty).
        The arithmetic of sample_rows for one row, element for element (a test holds them equal):
        without its batch bookkeeping it costs a third (mixer-run's loop samples every byte)."""
        if self.plain_greedy:  # the hot path of greedy decoding
            best = int(logits.argmax())
            if self._allowed[best]:
                return best
        x = logits.astype(np.float64)  # (V,)
        x[self.banned] = -np.inf
        if self.adjusts:
            self.adjust(x, recent)
        if self.temperature == 0:
            return int(x.argmax())
        d = (x - x.max()) / self.temperature  # log p relative to the most likely byte, as _draw
        ids = np.flatnonzero(d >= self.log_min_p)
        return self.pick(ids.tolist(), d[ids].tolist())

    def pick(self, ids: list[int], logp: list[float]) -> int:
        """One of the min-p candidates `ids` (ascending; `logp` their log-probabilities relative to
        the most likely): top-k, then top-p of the mass left, then one draw from the generator."""
        order = sorted(range(len(ids)), key=logp.__getitem__, reverse=True)[:self.top_k]  # ties: lower byte
        cdf = list(itertools.accumulate(math.exp(logp[i]) for i in order))  # (k,) most likely first
        keep = len(cdf)
        if self.params.top_p < 1:  # the smallest prefix whose mass reaches top_p
            keep = min(keep, bisect.bisect_left(cdf, self.params.top_p * cdf[-1]) + 1)
        target = self.rng.random() * cdf[keep - 1]
        return ids[order[min(bisect.bisect_right(cdf, target, 0, keep), keep - 1)]]

    def accepted(self, token: int, times: int = 1) -> None:
        """The row generated `token` (`times` more times): counted for the presence and frequency
        penalties."""
        if self.counted:
            self.counts[token] = self.counts.get(token, 0) + times
            self._penalty[token] = self.counts[token] * self.params.frequency_penalty + self.params.presence_penalty

    def adjust(self, logits: np.ndarray, recent) -> None:
        """A (V,) float64 row, in place, before temperature: CTRL's repetition penalty over the
        last repeat_last_n tokens, then OpenAI's presence and frequency penalties over the bytes
        generated so far, then the logit bias."""
        p = self.params
        if self.penalized and len(recent):
            seen = np.unique(np.asarray(recent[-p.repeat_last_n:], dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if self.counts:
            logits -= self._penalty  # (0 for a byte not generated: its logit keeps every bit)
        if self.bias is not None:
            logits[self.bias[0]] += self.bias[1]


def sample_rows(samplers: list[Sampler], logits: np.ndarray, recents: list) -> list[int | Exception]:
    """One byte per row from (B, V) logits; row b uses samplers[b] and its recent tokens. A row
    whose own part fails (its penalty or its draw) gets the exception in its place, and the other
    rows their bytes, the same as without it (nothing a row computes depends on the others)."""
    greedy = any(s.plain_greedy for s in samplers)
    out = logits.argmax(axis=1).tolist() if greedy else [0] * len(samplers)
    rest = [b for b, s in enumerate(samplers) if not (s.plain_greedy and s._allowed[out[b]])]
    if not rest:
        return out
    sub = [samplers[b] for b in rest]
    x = (logits if len(rest) == len(samplers) else logits[rest]).astype(np.float64)  # (R, V) float64
    drawn = []
    for r, (b, s) in enumerate(zip(rest, sub)):
        x[r, s.banned] = -np.inf
        try:
            if s.adjusts:
                s.adjust(x[r], recents[b])
        except Exception as e:  # noqa: BLE001 - the row's own failure, handed to its caller
            out[b] = e
            continue
        if s.temperature == 0:
            out[b] = int(x[r].argmax())
        else:
            drawn.append(r)
    if drawn:
        x = x if len(drawn) == len(rest) else x[drawn]
        for r, token in zip(drawn, _draw(x, [sub[r] for r in drawn])):
            out[rest[r]] = token
    return out


def _draw(x: np.ndarray, samplers: list[Sampler]) -> list[int]:
    """(R, V) logits -> one byte per row at each row's temperature. numpy finds each row's min-p
    candidates (few); Python floats finish each row, so nothing a row computes depends on the
    other rows."""
    R, V = x.shape
    x -= x.max(axis=1, keepdims=True)
    x /= np.array([[s.temperature] for s in samplers])  # (R, V) log p relative to the most likely byte
    flat = (x >= np.array([[s.log_min_p] for s in samplers])).ravel().nonzero()[0]  # row-major
    bounds = np.searchsorted(flat, np.arange(0, (R + 1) * V, V)).tolist()  # each row's slice
    ids, logp = (flat % V).tolist(), x.ravel()[flat].tolist()
    return [_pick(s, ids[a:b], logp[a:b]) for s, a, b in zip(samplers, bounds, bounds[1:])]


def _pick(sampler: Sampler, ids: list[int], logp: list[float]) -> int | Exception:
    try:
        return sampler.pick(ids, logp)
    except Exception as e:  # noqa: BLE001 - one row's failure must not cost the others their draw
        return e
