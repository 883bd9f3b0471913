"""Byte-level sampling: temperature, min-p, top-k, top-p, repetition penalty; seeded RNG.

One sampler for one row and for many: `sample_rows` turns a (B, V) block of logits into one byte
per row, and a row's byte does not depend on the other rows. Every operation is elementwise or
runs along the row alone (max, exp, a stable sort of the row's own candidates, a cumulative sum in
order), so a row gets the same bits in any batch. A few rows finish their draw in Python floats
(`Sampler.pick`: ~9 us a row, where numpy's fixed cost per call would be ~40 us); more rows finish
it in one set of numpy calls for all (`_draw`: ~45 us for 32 rows, ~10 us a row the other way).
The two compute the same numbers in the same order (exp's last bit aside, libm's and numpy's; a
draw moves only if its uniform number falls within that ulp of a boundary); tests hold them equal
over hypothesis-made batches, and to bytes recorded before `_draw` existed.

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
from ..format import BOS_ID, EOS_ID, MAX_SNAPSHOT_DRAWS, MAX_SNAPSHOT_TOKENS, PAD_ID

BANNED = (PAD_ID, BOS_ID)  # never sampled; eos too when ignore_eos (banned_ids)


MIN_PENALTY = 0.01  # logits over a smaller penalty could overflow to inf
MAX_REPLAY = MAX_SNAPSHOT_DRAWS  # draws a snapshot may ask to replay (past it: the Twister's state itself)
TINY_TEMPERATURE = 1e-30


@dataclasses.dataclass(frozen=True)
class Bound:
    """A sampling field's range, its one home: the runtime checks it (SamplingParams), the server
    derives its request fields and their 400 messages from it (serve/fields.py), the docs' and
    the playground's numbers are tested against it. `served`: the server's upper bound where the
    API's is tighter than the runtime's (OpenAI's temperature 2, llama.cpp's repeat_penalty 10)."""
    low: float
    high: float | None = None
    above: bool = False          # low itself excluded
    served: float | None = None
    integer: bool = False

    def holds(self, v, served: bool = False) -> bool:
        high = self.served if served and self.served is not None else self.high
        kind = (isinstance(v, int) if self.integer else isinstance(v, (int, float)) and math.isfinite(v))
        return (kind and not isinstance(v, bool) and (v > self.low if self.above else v >= self.low)
                and (high is None or v <= high))

    def text(self, served: bool = False) -> str:
        """What a value must be: 'a number from 0 to 2', 'a number in (0, 1]', 'an integer >= 0'."""
        high = self.served if served and self.served is not None else self.high
        kind = "an integer" if self.integer else "a number"
        if high is None:
            return f"{kind} {'>' if self.above else '>='} {self.low:g}"
        return f"{kind} in ({self.low:g}, {high:g}]" if self.above else f"{kind} from {self.low:g} to {high:g}"


def _field(default, bound: Bound | None = None):
    return dataclasses.field(default=default, metadata={"bound": bound} if bound else {})


LOGIT_BIAS = Bound(-100, 100)  # each bias; the bytes are 0-255


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = _field(0.8, Bound(0, served=2.0))     # 0 = greedy argmax
    top_k: int = _field(40, Bound(0, served=256, integer=True))  # 0 = off
    top_p: float = _field(0.95, Bound(0, 1, above=True))        # 1 = off
    min_p: float = _field(0.05, Bound(0, 1))  # 0 = off; keep bytes with p >= min_p * p_max
    repetition_penalty: float = _field(1.0, Bound(MIN_PENALTY, served=10.0))  # 1 = off; CTRL-style, over the last `repeat_last_n` tokens
    repeat_last_n: int = _field(64, Bound(0, MAX_SNAPSHOT_TOKENS, integer=True))  # (a snapshot holds the window)
    ignore_eos: bool = False
    presence_penalty: float = _field(0.0, Bound(-2, 2))   # OpenAI's: minus this from every byte generated so far
    frequency_penalty: float = _field(0.0, Bound(-2, 2))  # OpenAI's: minus this times how often it was generated
    logit_bias: tuple = ()           # ((byte, bias), ...): added to those bytes' logits

    def __post_init__(self):
        for f in dataclasses.fields(self):
            bound, value = f.metadata.get("bound"), getattr(self, f.name)
            if bound is not None and not bound.holds(float(value) if isinstance(value, int) and not bound.integer
                                                     else value):
                raise MixerError(f"{f.name.replace('_', '-')} must be {bound.text()}")
        if not all(0 <= int(t) < 256 and LOGIT_BIAS.holds(float(b)) for t, b in self.logit_bias):
            raise MixerError(f"logit bias: bytes 0-255, biases {LOGIT_BIAS.text()}")

    @staticmethod
    def bound(name: str) -> Bound:
        return next(f.metadata["bound"] for f in dataclasses.fields(SamplingParams) if f.name == name)


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
    """One row's sampling parameters, seeded generator, and what its penalties remember: the
    last repeat_last_n tokens (prompt and generated) and how often each byte was generated."""

    def __init__(self, params: SamplingParams, seed: int | None = None, vocab_size: int = 256,
                 constrained: bool = False):
        self.params = params
        self.mask = None  # (V,) bool, a constrained row's allowed bytes this step (set by the engine)
        self.reseed(seed)
        self.banned = list(banned_ids(params))
        self._allowed = [i not in self.banned for i in range(vocab_size)]  # by id, for the greedy fast path
        self.penalized = params.repetition_penalty != 1.0 and params.repeat_last_n > 0
        self.recent: list[int] = []      # the latest tokens, the last repeat_last_n of them in the window
        self._window = np.zeros(vocab_size, np.int64) if self.penalized else None  # (V,) counts in the window
        self.counted = bool(params.presence_penalty or params.frequency_penalty)
        self.counts: dict[int, int] = {}  # byte -> times generated (for presence and frequency)
        self._penalty = np.zeros(vocab_size) if self.counted else None  # (V,) what those take off
        self._bias = None  # (V,) what logit_bias adds (0 elsewhere; a byte given twice: the last bias)
        if params.logit_bias:
            self._bias = np.zeros(vocab_size)
            self._bias[[int(t) for t, _ in params.logit_bias]] = [b for _, b in params.logit_bias]
        self.adjusts = self.penalized or self.counted or self._bias is not None or constrained
        self.plain_greedy = params.temperature == 0 and not self.adjusts
        self.top_k = params.top_k or vocab_size
        # 0 is greedy; any other temperature at least TINY_TEMPERATURE, so that (x - max) / T never
        # overflows (it is greedy all the same: every other byte's log-probability is -1e30 or less)
        self.temperature = max(params.temperature, TINY_TEMPERATURE) if params.temperature else 0.0
        self.log_min_p = math.log(params.min_p) if params.min_p > 0 else -1e308  # > -inf: never banned bytes

    def sample(self, logits: np.ndarray) -> int:
        """One byte from a (V,) logit row: `sample_rows` for a batch of one (its failure raised)."""
        token = sample_rows([self], logits[None])[0]
        if isinstance(token, Exception):
            raise token
        return token

    def uniform(self) -> float:
        """The row's one draw for this byte: its generator's next number in [0, 1)."""
        self.draws += 1
        return self.rng.random()

    def reseed(self, seed: int | None) -> None:
        """Start the generator afresh: from `seed`, or without one from 64 random bits, so that
        its state is always (seed, draws): 16 bytes in a snapshot, not the Mersenne Twister's 2.5 KB."""
        self.seed = seed_value(seed) if seed is not None else random.SystemRandom().getrandbits(64)
        self.rng, self.draws = random.Random(self.seed), 0

    def generator(self) -> tuple:
        """The generator's state: (seed, draws), or (None, the Mersenne Twister's state) when it
        was resumed from a state that had no seed (a snapshot of version 1) or drew too often to
        replay (MAX_REPLAY)."""
        if self.seed is not None and self.draws <= MAX_REPLAY:
            return self.seed, self.draws
        return None, self.rng.getstate()

    def resume(self, seed: int | None, state) -> None:
        """The generator of `generator()`: `seed` and its draws replayed, or the Twister's state."""
        if seed is None:
            self.seed, self.draws = None, 0
            self.rng.setstate(state)
            return
        self.reseed(seed)
        for _ in range(state):  # (~40 ns a draw: MAX_REPLAY in ~3 ms)
            self.rng.random()
        self.draws = state

    def pick(self, ids: list[int], logp: list[float]) -> int:
        """One of the min-p candidates `ids` (ascending; `logp` their log-probabilities relative to
        the most likely): top-k, then top-p of the mass left, then one draw. `_draw`'s arithmetic
        for one row, in Python floats."""
        order = sorted(range(len(ids)), key=logp.__getitem__, reverse=True)[:self.top_k]  # ties: lower byte
        cdf = list(itertools.accumulate(math.exp(logp[i]) for i in order))  # (k,) most likely first
        if not cdf:
            raise _nothing_to_draw()
        keep = len(cdf)
        if self.params.top_p < 1:  # the smallest prefix whose mass reaches top_p
            keep = min(keep, bisect.bisect_left(cdf, self.params.top_p * cdf[-1]) + 1)
        target = self.uniform() * cdf[keep - 1]
        return ids[order[min(bisect.bisect_right(cdf, target, 0, keep), keep - 1)]]

    def remember(self, tokens) -> None:
        """Tokens now in the row (prompt or generated): the repetition penalty's window. Kept with
        the penalty off too (repeat_last_n > 0): a snapshot carries them to a row that has it on."""
        for token in tokens:
            self.remember_one(token)

    def remember_one(self, token: int) -> None:
        """`remember` of one token (the engine's per-byte path)."""
        n, recent = self.params.repeat_last_n, self.recent
        if not n:
            return
        recent.append(token)
        if self._window is not None:
            self._window[token] += 1
            if len(recent) > n:
                self._window[recent[-n - 1]] -= 1  # (it left the window)
        if len(recent) > 2 * n:
            del recent[:-n]

    def accepted(self, token: int, times: int = 1) -> None:
        """The row generated `token` (`times` more times): counted for the presence and frequency
        penalties (the window is `remember`'s)."""
        if self.counted:
            self.counts[token] = self.counts.get(token, 0) + times
            self._penalty[token] = self.counts[token] * self.params.frequency_penalty + self.params.presence_penalty


def sample_rows(samplers: list[Sampler], logits: np.ndarray) -> list[int | Exception]:
    """One byte per row from (B, V) logits; row b uses samplers[b]. A row whose own draw fails
    gets the exception in its place, and the other rows their bytes, the same as without it."""
    if len(samplers) == 1:
        return [_one(samplers[0], logits[0])]
    greedy = any(s.plain_greedy for s in samplers)
    out = logits.argmax(axis=1).tolist() if greedy else [0] * len(samplers)
    rest = [b for b, s in enumerate(samplers) if not (s.plain_greedy and s._allowed[out[b]])]
    if not rest:
        return out
    sub = [samplers[b] for b in rest]
    x = (logits if len(rest) == len(samplers) else logits[rest]).astype(np.float64)  # (R, V) float64
    x[:, BANNED] = -np.inf
    eos = [r for r, s in enumerate(sub) if s.params.ignore_eos]
    if eos:
        x[eos, EOS_ID] = -np.inf
    if any(s.adjusts for s in sub):
        _adjust(x, sub)
    drawn = []
    for r, (b, s) in enumerate(zip(rest, sub)):
        if s.temperature == 0:
            out[b] = int(x[r].argmax())
        else:
            drawn.append(r)
    if drawn:
        x = x if len(drawn) == len(rest) else x[drawn]
        draw = _pick_each if len(drawn) <= PICK_ROWS else _draw
        for r, token in zip(drawn, draw(x, [sub[r] for r in drawn])):
            out[rest[r]] = token
    return out


def _one(s: Sampler, logits: np.ndarray) -> int | Exception:
    """sample_rows for one (V,) row (mixer-run's loop samples every byte): the same arithmetic on
    1-D arrays, a third of the numpy calls."""
    if s.plain_greedy:  # the hot path of greedy decoding
        best = int(logits.argmax())
        if s._allowed[best]:
            return best
    x = logits.astype(np.float64)  # (V,)
    x[s.banned] = -np.inf
    if s.adjusts:
        _adjust(x[None], [s])
    if s.temperature == 0:
        return int(x.argmax())
    d = (x - x[x.argmax()]) / s.temperature  # log p relative to the most likely byte
    ids = np.flatnonzero(d >= s.log_min_p)
    return _pick(s, ids.tolist(), d[ids].tolist())


def _adjust(x: np.ndarray, samplers: list[Sampler]) -> None:
    """(R, V) float64 logits, in place, before temperature: CTRL's repetition penalty over each
    row's window, then OpenAI's presence and frequency penalties over the bytes it generated, then
    its logit bias; each for the rows that have it, in one numpy call for all of them. Last, a
    constrained row's mask (runtime/constraint.py): what it does not allow is -inf, so that
    temperature and the filters see only allowed bytes."""
    rows = [r for r, s in enumerate(samplers) if s.penalized and s.recent]
    if rows:
        seen = np.stack([samplers[r]._window for r in rows]) > 0  # (P, V)
        v = x[rows]
        penalty = np.array([[samplers[r].params.repetition_penalty] for r in rows])
        x[rows] = np.where(seen, np.where(v > 0, v / penalty, v * penalty), v)
    rows = [r for r, s in enumerate(samplers) if s.counts]
    if rows:  # (0 for a byte not generated: its logit keeps every bit)
        x[rows] -= np.stack([samplers[r]._penalty for r in rows])
    rows = [r for r, s in enumerate(samplers) if s._bias is not None]
    if rows:
        x[rows] += np.stack([samplers[r]._bias for r in rows])
    for r, s in enumerate(samplers):
        if s.mask is not None:
            x[r, ~s.mask] = -np.inf


PICK_ROWS = 8  # up to this many rows draw one by one in Python floats (measured: scripts/engine_bench.py)


def _candidates(x: np.ndarray, samplers: list[Sampler]):
    """(R, V) logits -> each row's min-p candidates, row by row, ascending bytes: their flat
    indices into x and their log-probabilities relative to the row's most likely byte,
    (x - max) / T, exactly as computed for the whole row. Only a superset is found over the whole
    block (x >= max + log_min_p * T, less a margin far above rounding); the few found are then
    computed and tested exactly."""
    R, V = x.shape
    temperature, log_min_p, reach = _columns(samplers)[:3]
    m = x.ravel()[x.argmax(axis=1) + np.arange(0, R * V, V)][:, None]  # (R, 1) the max (argmax: 4x faster)
    rough = m + reach  # (R, 1)
    flat = (x >= rough - 1e-6 * (1 + np.abs(rough))).ravel().nonzero()[0]  # (N,) row-major
    rows = flat // V
    logp = (x.ravel()[flat] - m[rows, 0]) / temperature[rows, 0]
    exact = logp >= log_min_p[rows, 0]
    return flat[exact], logp[exact]


def _pick_each(x: np.ndarray, samplers: list[Sampler]) -> list[int | Exception]:
    """(R, V) logits -> one byte per row: numpy finds each row's min-p candidates (few), Python
    floats finish each row (`Sampler.pick`)."""
    R, V = x.shape
    flat, logp = _candidates(x, samplers)
    bounds = np.searchsorted(flat, np.arange(0, (R + 1) * V, V)).tolist()  # each row's slice
    ids, logp = (flat % V).tolist(), logp.tolist()
    return [_pick(s, ids[a:b], logp[a:b]) for s, a, b in zip(samplers, bounds, bounds[1:])]


def _pick(sampler: Sampler, ids: list[int], logp: list[float]) -> int | Exception:
    try:
        return sampler.pick(ids, logp)
    except Exception as e:  # noqa: BLE001 - one row's failure must not cost the others their draw
        return e


def _draw(x: np.ndarray, samplers: list[Sampler]) -> list[int | Exception]:
    """(R, V) logits (float64, adjusted, banned bytes -inf) -> one byte per row, every row in
    the same numpy calls: `Sampler.pick`'s arithmetic for all rows at once.

    Per row: log p relative to the most likely byte at the row's temperature; the min-p
    candidates; the top-k of them, most likely first (ties: the lower byte first); their
    probabilities' running sum; the top-p prefix; one uniform number from the row's generator
    times the prefix's mass; the first byte whose running sum passes it."""
    R, V = x.shape
    top_k, top_p = _columns(samplers)[3:]
    flat, logp = _candidates(x, samplers)
    count = np.bincount(flat // V, minlength=R)  # (R,)
    if (count > top_k).any():  # top-k cuts: drop what lies below the row's k-th largest (ties stay)
        kth = np.sort(x, axis=1)[np.arange(R), V - np.minimum(top_k, V)]  # (R,) in x, before (x - max) / T
        near = x.ravel()[flat] >= (kth - 1e-6 * (1 + np.abs(kth)))[flat // V]
        flat, logp = flat[near], logp[near]
        count = np.bincount(flat // V, minlength=R)
    order = np.lexsort((-logp, flat // V))  # most likely first in each row; ties: the lower byte (stable)
    flat, logp = flat[order], logp[order]
    rows = flat // V
    k = np.minimum(count, top_k)  # (R,) what each row draws from before top-p
    K = int(k.max())
    if K == 0:
        return [_nothing_to_draw()] * R
    start = np.cumsum(count) - count  # (R,) each row's first candidate
    rank = np.arange(len(flat)) - start[rows]  # (N,) place in its row
    mine = rank < k[rows]
    table = np.zeros((R, K))  # (R, K) probabilities, most likely first; 0 past a row's k
    table[rows[mine], rank[mine]] = np.exp(logp[mine])
    cdf = np.cumsum(table, axis=1)  # (R, K) running sums, in order (flat past k)
    keep = np.minimum(k, (cdf < top_p[:, None] * cdf[:, -1:]).sum(axis=1) + 1)  # (top_p 1: k)
    last = np.maximum(keep, 1) - 1
    uniform = [_uniform(s) if n else _nothing_to_draw() for s, n in zip(samplers, k.tolist())]
    target = np.array([u if isinstance(u, float) else 0.0 for u in uniform]) * cdf[np.arange(R), last]
    at = np.minimum((cdf <= target[:, None]).sum(axis=1), last)  # (past keep: all > target)
    drawn = (flat[np.minimum(start + at, len(flat) - 1)] % V).tolist()  # (a row with nothing: unused)
    return [t if isinstance(u, float) else u for t, u in zip(drawn, uniform)]


def _uniform(sampler: Sampler) -> float | Exception:
    try:
        return sampler.uniform()
    except Exception as e:  # noqa: BLE001 - one row's failure must not cost the others their draw
        return e


_COLUMNS = ((), ())  # the last rows' samplers and their columns (rows stay from step to step)


def _columns(samplers: list[Sampler]) -> tuple[np.ndarray, ...]:
    """The rows' (R, 1) temperatures, log min-p and log min-p x temperature (where min-p reaches
    below the max, at least -1e300), (R,) top-k and top-p."""
    global _COLUMNS
    key, cached = _COLUMNS  # (one tuple, swapped whole: engines on other threads may swap it too)
    if key != tuple(samplers):  # (the key holds its samplers: no id is reused while cached)
        cached = (np.array([[s.temperature] for s in samplers]), np.array([[s.log_min_p] for s in samplers]),
                  np.array([[max(s.log_min_p * s.temperature, -1e300)] for s in samplers]),
                  np.array([s.top_k for s in samplers]), np.array([s.params.top_p for s in samplers]))
        _COLUMNS = tuple(samplers), cached
    return cached


def _nothing_to_draw() -> MixerError:
    return MixerError("no byte to sample: the row's logits are not finite")
