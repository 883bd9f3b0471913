"""Log-probabilities per byte (OpenAI's `logprobs`, vLLM's `prompt_logprobs`).

A row with `GenerateOptions.logprobs` set keeps a Trail: for each byte it generated (and, with
`prompt_logprobs`, each byte of its prompt) the byte, its log-probability, the `k` most likely
bytes with theirs, and the character offset of its text. The log-probabilities are the model's
own log-softmax of the logits that predicted the byte: before temperature, penalties, logit bias
and the top-k/top-p/min-p filters (vLLM's default), so a seed or a filter changes which byte is
drawn, never the numbers given for it.

Offsets count characters of the row's text (the prompt's too, when it is in the trail): a byte
of a character that spans several bytes has the offset of that character. The end-of-sequence
byte that ends a row is in the trail (as vLLM lists its eos token) but not in the text.
"""
from __future__ import annotations

import codecs
import dataclasses

import numpy as np

from ..format import EOS_ID

MAX_LOGPROBS = 20  # top alternatives per byte at most (OpenAI's limit, for chat)


@dataclasses.dataclass(frozen=True)
class Entry:
    token: int                          # the byte
    logprob: float | None               # None: the first byte of a prompt (nothing predicts it)
    top: tuple[tuple[int, float], ...]  # the k most likely bytes, most likely first, and the byte itself
    offset: int                         # character offset of its text


def token_text(token: int) -> str:
    """A byte as OpenAI writes a token: its character if it is one (ASCII), else "bytes:\\xNN"
    (a byte of a multi-byte UTF-8 character is not text on its own)."""
    return chr(token) if token < 0x80 else f"bytes:\\x{token:02x}"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) logits -> (..., V) log-probabilities, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def best(logp: np.ndarray, k: int) -> np.ndarray:
    """(..., V) log-probabilities -> (..., k) the k most likely bytes of each row, most likely
    first; ties go to the lower byte."""
    return np.argsort(-logp, axis=-1, kind="stable")[..., :k]


def _entry(logp: np.ndarray, token: int, top_ids: list[int], offset: int) -> Entry:
    """logp (V,), top_ids its k most likely bytes: the byte's entry."""
    top = [(t, float(logp[t])) for t in top_ids] + ([] if token in top_ids else [(token, float(logp[token]))])
    return Entry(token, float(logp[token]), tuple(top), offset)


class _Offsets:
    """Character offsets of bytes as they come, in the text that decoding them with errors
    "replace" gives (the row's TextStream decodes the same way)."""

    def __init__(self):
        self._decoder, self.chars = codecs.getincrementaldecoder("utf-8")(errors="replace"), 0

    def next(self, token: int) -> int:
        self.chars += len(self._decoder.decode(bytes((token,))))
        # a byte either waits in the decoder (its character starts at `chars`) or ended the last
        # character emitted (a U+FFFD for bytes before it may come out with it)
        return self.chars if self._decoder.getstate()[0] else self.chars - 1

    def close(self) -> int:
        """The text's length, an incomplete character at the end counted as its U+FFFD (the
        decoder is done: no byte may follow)."""
        self.chars += len(self._decoder.decode(b"", True))
        return self.chars


class Trail:
    """One row's entries, and which of them the caller has taken."""

    def __init__(self, k: int, entries: list[Entry] = (), base: int = 0):
        self.k, self.entries, self.base = k, list(entries), base  # base: characters before the generated text
        self._offsets, self._taken = _Offsets(), 0

    @classmethod
    def of_prompt(cls, k: int, ids: list[int], logits: np.ndarray, start: int) -> "Trail":
        """The prompt's entries: ids[start:], the prompt as the client gave it (ids[0] is bos;
        start 0 when the client sent it). logits (len(ids), V): logits[j] predicts ids[j + 1].
        The first entry's logprob is None, as OpenAI gives it."""
        # log-softmax by blocks of rows (8 MB at a time, not T x 2 KB), taken in order
        rows = (r for b in range(0, len(logits), 4096) for r in log_softmax(logits[b:b + 4096]))
        offsets, entries = _Offsets(), []
        for j in range(start, len(ids)):
            logp = next(rows) if j > 0 else None  # logits[j - 1]: what predicted ids[j]
            at = offsets.next(ids[j])
            entries.append(_entry(logp, ids[j], best(logp, k).tolist(), at) if j > start
                           else Entry(ids[j], None, (), at))
        return cls(k, entries, offsets.close())

    def copy(self, k: int) -> "Trail":
        """A fork's trail: the entries so far (a prompt's), nothing generated yet."""
        return Trail(k, self.entries, self.base)

    def add(self, token: int, logp: np.ndarray, top_ids: list[int]) -> None:
        """The row drew `token` (eos too: it ends the row, no text) where the model gave these (V,)
        log-probabilities, whose most likely bytes are top_ids (at least k of them, in order).
        The engine takes the log-softmax and the top bytes of every such row in one pass."""
        at = self._offsets.close() if token == EOS_ID else self._offsets.next(token)  # eos: the text's end
        self.entries.append(_entry(logp, token, top_ids[:self.k], self.base + at))

    def take(self, chars: int, final: bool = False, cut: bool = False) -> list[Entry]:
        """The entries not taken yet whose text is out: the caller has `chars` characters of
        generated text. At the end (`final`) all the rest, unless a stop string `cut` the text:
        then only those of the text kept."""
        n = len(self.entries)
        if not final or cut:
            while n > self._taken and self.entries[n - 1].offset >= self.base + chars:
                n -= 1
        out, self._taken = self.entries[self._taken:n], max(n, self._taken)
        return out
