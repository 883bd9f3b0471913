"""What happens past max_seq_len (W): the three context modes, for a batch of sequences.

- window:    the original behaviour. Past W, every token re-folds the last W tokens in one call,
             positions restarting at 0: exact parity with MicroMixer-1's generate, O(W) per token.
- halve:     when a row's state holds W tokens, re-fold its last W/2 in one call and keep stepping:
             positions stay below W (as in training) at amortized O(1) per token.
- unbounded: never reset; positions and sums grow without limit.
"""
from __future__ import annotations

import numpy as np

from ..format import MixerError, CONTEXT_MODES, DEFAULT_CONTEXT_MODE
from .model import MixerModel, State


class Context:
    """Feeds tokens to a model under a context mode; one row per sequence."""

    def __init__(self, model: MixerModel, batch: int = 1, mode: str = DEFAULT_CONTEXT_MODE):
        if mode not in CONTEXT_MODES:
            raise MixerError(f"unknown context mode {mode!r}; choose one of {', '.join(CONTEXT_MODES)}")
        self.model, self.mode, self.W = model, mode, model.max_seq_len
        self._stepper = model.stepper(batch)
        self.history: list[list[int]] = [[] for _ in range(batch)]  # recent tokens per row

    @property
    def state(self) -> State:
        """The live state of every row (a view: assign through `set_rows`)."""
        return self._stepper.state

    def _remember(self, row: int, tokens) -> None:
        if self.mode != "unbounded":
            h = self.history[row]
            h.extend(tokens)
            if len(h) > 2 * self.W:  # trim now and then, keeping the last W
                del h[:-self.W]

    def _refold(self, rows: list[int], keep: int, last: list[int] | None = None) -> np.ndarray:
        """Restart rows from position 0 with their last `keep` tokens (+ one new token each)."""
        block = np.array([self.history[r][-keep:] + ([last[i]] if last else [])
                          for i, r in enumerate(rows)], dtype=np.int64)
        logits, st = self.model.prefill(block)
        self.state.set_rows(rows, st)
        return logits[:, -1]

    def feed_sequence(self, tokens, row: int = 0) -> np.ndarray:
        """Fold a run of tokens into one row, in as few calls as the mode allows: (T,) -> (T, V)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out, i, W = [], 0, self.W
        while i < len(tokens):
            pos = int(self.state.position[row])
            if self.mode == "window" and pos >= W:
                out.append(self._refold([row], W - 1, [int(tokens[i])]))
                self._remember(row, tokens[i:i + 1].tolist())
                i += 1
                continue
            if self.mode == "halve" and pos >= W:
                self._refold([row], W // 2)
                pos = W // 2
            n = len(tokens) - i if self.mode == "unbounded" else min(len(tokens) - i, W - pos)
            logits, st = self.model.run(tokens[None, i:i + n], self.state.rows([row]))
            self.state.set_rows([row], st)
            self._remember(row, tokens[i:i + n].tolist())
            out.append(logits[0])
            i += n
        return np.concatenate(out)

    def feed_one(self, token: int) -> np.ndarray:
        """`feed` for a single row: (V,) logits in a buffer that the next call overwrites."""
        if self.mode == "unbounded":
            return self._stepper.step_one(token)
        if self._stepper.position[0] >= self.W:
            return self.feed((token,))[0]
        self._remember(0, (token,))
        return self._stepper.step_one(token)

    def feed(self, tokens) -> np.ndarray:
        """One new token per row, (B,) -> next-token logits (B, V); one call for the common case."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.mode == "unbounded" or self._stepper.position.max() < self.W:
            logits = self._stepper.step(tokens).copy()
        else:
            full = self._stepper.position >= self.W
            rows = np.flatnonzero(full).tolist()
            if self.mode == "halve":
                self._refold(rows, self.W // 2)
                logits = self._stepper.step(tokens).copy()
            else:  # window: full rows re-fold their last W tokens; the others step
                logits = np.empty((len(tokens), self.model.config.vocab_size), np.float32)
                logits[rows] = self._refold(rows, self.W - 1, tokens[rows].tolist())
                rest = np.flatnonzero(~full)
                if len(rest):
                    logits[rest], st = self.model.step(tokens[rest], self.state.rows(rest))
                    self.state.set_rows(rest, st)
        if self.mode != "unbounded":
            for row, token in enumerate(tokens.tolist()):
                self._remember(row, (token,))
        return logits
