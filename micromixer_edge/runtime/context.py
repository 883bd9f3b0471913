"""The context modes: what happens once a row's state holds W = max_seq_len tokens.

A mode is two numbers. When a row's state holds `boundary(W)` tokens and a new token comes, the
state restarts from position 0 with the row's last `keep(W)` tokens and the new one, folded in one
call (a re-fold). Everything else follows from those two numbers and lives here once: which
suffix of a long prompt a state depends on, where a row's next re-fold is, and the logits of a
whole sequence fed under the mode (scoring: mixer-eval, the quantization report).

- window:    boundary W, keep W-1: past W every token re-folds the last W (the original's
             semantics: exact parity with MicroMixer-1's generate, O(W) per token).
- halve:     boundary W, keep W/2: positions stay below W as in training, amortized O(1).
- unbounded: never; positions and sums grow without limit.

A fourth mode is one more class in MODES.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import MixerError

# Long sequences fold in graph calls that end at multiples of FOLD_CHUNK positions, so a state at
# such a position has the same bits however it was reached: from position 0, or resumed from a
# state cached there (runtime/prompt_cache.py). Calls cut elsewhere may round differently (one
# call and token by token differ in the last bits: a kernel may take a block of rows another way
# than one row). Calls of 256 or 512 fold fastest: 20 KB in 404 or 407 ms, 447 in calls of 1,024
# and 620 of 4,096 (float 1m, x86 AVX-512; docs/performance.md); 512 keeps fewer cached states.
FOLD_CHUNK = 512


def chunk_end(position: int, n: int) -> int:
    """How many of the next n tokens one call folds into a state at `position`."""
    return min(n, FOLD_CHUNK - position % FOLD_CHUNK)


class ContextMode:
    name = ""

    def boundary(self, W: int) -> float:
        """The position at which the next token re-folds the state (inf: never)."""
        raise NotImplementedError

    def keep(self, W: int) -> int:
        """How many of the row's latest tokens a re-fold keeps (before the new one)."""
        raise NotImplementedError

    # --- what follows from the two numbers, the same for every mode ---------------------------
    def bounded(self, W: int) -> bool:
        return self.boundary(W) != math.inf

    def check(self, W: int) -> None:
        """What the engine assumes of a mode: a bounded one re-folds at W at the latest and keeps
        fewer tokens than its boundary (a row remembers its last W tokens, no more)."""
        if self.bounded(W) and not 0 <= self.keep(W) < self.boundary(W) <= W:
            raise ValueError(f"context mode {self.name}: needs 0 <= keep < boundary <= W = {W}")

    def suffix(self, position: int, n: int, W: int) -> int | None:
        """After folding n tokens into a state that holds `position`, the state depends on the last
        this-many tokens only (fold them from position 0); None: no re-fold, fold on."""
        B, K = self.boundary(W), self.keep(W)
        over = position + n - B  # tokens that arrive at or past the boundary
        if over <= 0:
            return None
        return K + (over - 1) % (B - K) + 1  # a re-fold every B - K tokens; the last one's tokens


class Window(ContextMode):
    name = "window"

    def boundary(self, W):
        return W

    def keep(self, W):
        return W - 1


class Halve(ContextMode):
    name = "halve"

    def boundary(self, W):
        return W

    def keep(self, W):
        return W // 2


class Unbounded(ContextMode):
    name = "unbounded"

    def boundary(self, W):
        return math.inf

    def keep(self, W):
        return 0


MODES = {m.name: m for m in (Halve(), Window(), Unbounded())}
CONTEXT_MODES = tuple(MODES)      # the CLI's choices and the server's
DEFAULT_CONTEXT_MODE = "halve"


def context_mode(name: str) -> ContextMode:
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise MixerError(f"unknown context mode {name!r}; choose one of {', '.join(CONTEXT_MODES)}") from None


def sequence_logits(model, ids, mode: str = DEFAULT_CONTEXT_MODE) -> np.ndarray:
    """(T,) token ids -> (T, V): the logits after each token, as feeding the ids one by one under
    the mode gives them (up to the last bits), in as few calls as the mode allows. Teacher
    forcing: what scoring needs. Past the boundary each call re-folds a block from position 0:
    window makes one block of W tokens per token (7.4 ms each for the int8 1m on x86; blocks
    batched together measured slower: 32 in one call took 334 ms)."""
    m, W = context_mode(mode), model.max_seq_len
    B, K = m.boundary(W), m.keep(W)
    ids, out, state, i = np.asarray(ids, np.int64), [], model.new_state(1), 0
    while i < len(ids):
        pos = int(state.position[0])
        if pos >= B:  # a re-fold: the last K tokens from position 0, and as many new ones as fit
            n = min(len(ids) - i, int(B) - K)
            logits, state = model.prefill(ids[None, i - K:i + n])
            out.append(logits[0, K:].copy())  # (a view would keep the whole block alive)
        else:
            n = chunk_end(pos, len(ids) - i if B == math.inf else min(len(ids) - i, int(B) - pos))
            logits, state = model.run(ids[None, i:i + n], state)
            out.append(logits[0])
        i += n
    return np.concatenate(out)
