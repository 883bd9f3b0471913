"""A batch of rows' recurrent state, as the graph carries it (its own module: the model and the
engine both use it, and the engine must not import the model that imports it)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class State:
    """The running sums the graph carries: `sums` (L, B, H) float32 and `position` (B,) int64."""
    sums: np.ndarray
    position: np.ndarray

    @property
    def batch(self) -> int:
        return self.sums.shape[1]

    def rows(self, index) -> "State":
        return State(self.sums[:, index], self.position[index])

    def set_rows(self, index, other: "State") -> None:
        self.sums[:, index] = other.sums
        self.position[index] = other.position
