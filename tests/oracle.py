"""The context modes as the README defines them, written plainly for one row, token by token, as
the truth the engine, fold() and sequence_logits are tested against (it shares no code with them):

- unbounded: every token is one step of the graph; the state never resets.
- window:    once the state holds W tokens, each new token re-folds the last W (it included) from
             position 0: the original MicroMixer-1 generate's semantics.
- halve:     whenever the state holds W tokens, it restarts from the last W/2 of them; then the new
             token is one step.
A re-fold is one graph call over the kept tokens from a fresh state (the graph gives the same bits
for one call and token by token: tested against the golden logits in test_export.py).
"""
from __future__ import annotations

import numpy as np


class ContextOracle:
    def __init__(self, model, mode: str):
        assert mode in ("unbounded", "window", "halve"), mode
        self.model, self.mode, self.W = model, mode, model.max_seq_len
        self.state, self.tokens = model.new_state(1), []  # every token fed so far

    def _one(self, token: int) -> np.ndarray:
        W, full = self.W, int(self.state.position[0]) >= self.W
        self.tokens.append(int(token))
        if self.mode == "window" and full:
            logits, self.state = self.model.prefill(np.asarray([self.tokens[-W:]], np.int64))
            return logits[0, -1]
        if self.mode == "halve" and full:
            _, self.state = self.model.prefill(np.asarray([self.tokens[-(W // 2) - 1:-1]], np.int64))
        logits, self.state = self.model.step(np.asarray([token], np.int64), self.state)
        return logits[0]

    def feed(self, tokens) -> np.ndarray:
        """(T,) -> (T, V): the logits after each token."""
        return np.stack([self._one(t) for t in tokens])
