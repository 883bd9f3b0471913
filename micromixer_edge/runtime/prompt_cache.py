"""Prompt prefix -> the row's state after it, so that a prompt sharing a leading part with one
folded recently resumes there instead of folding it again (RWKV-Runner's state cache; llama.cpp's
prompt cache keeps a KV cache of gigabytes for this, a state here is a few KB: (L, H) float32
sums and the (V,) logits, 3.7 KB for the 1m model).

States are kept at every FOLD_CHUNK-th position along a prompt (context.py: folds end their calls
there, so a state there has the same bits whichever way it was reached), and at the prompt's end,
which only a prompt with the very same tokens resumes from. A long document followed by different
questions thus resumes from the last multiple of FOLD_CHUNK within the document and folds at most
FOLD_CHUNK - 1 of its tokens again.

Keys chain a hash over the prompt's chunks (key_k = blake2b(key_{k-1} + chunk_k), the first one
seeded with the context mode and the model; a prompt's end has a key of another kind, which no
chunk key can equal), so looking a prompt up costs one pass over it. The
cache is bounded in bytes and drops the least recently used state first; it is thread-safe (a
server folds prompts on two threads).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading

import numpy as np

from .context import FOLD_CHUNK


@dataclasses.dataclass(frozen=True)
class Cached:
    tokens: int          # prompt tokens (bos included) the state holds
    sums: np.ndarray     # (L, H) float32
    position: int        # the state's position (the graph's; a bounded mode's re-folds restart it)
    logits: np.ndarray   # (V,) float32: what the state predicts next

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.logits.nbytes + 200  # (the key, the entry, the dict slot)


def _key(previous: bytes, data: bytes, kind: bytes = b"chunk") -> bytes:
    return hashlib.blake2b(previous + data, digest_size=16, person=kind).digest()


class PromptCache:
    def __init__(self, max_bytes: int, salt: str = ""):
        self.max_bytes, self.salt = max_bytes, salt.encode()
        self._entries: collections.OrderedDict[bytes, Cached] = collections.OrderedDict()
        self._lock, self.nbytes = threading.Lock(), 0
        self.hits = self.misses = self.hit_tokens = 0

    def keys(self, mode: str, ids: list[int]) -> tuple[dict[int, bytes], bytes]:
        """({tokens: key} for each multiple of FOLD_CHUNK within ids, the key of all of ids as a
        prompt's end)."""
        data, chunks = bytes(ids), {}
        key = _key(self.salt, mode.encode(), b"root")
        for end in range(FOLD_CHUNK, len(data) + 1, FOLD_CHUNK):
            key = chunks[end] = _key(key, data[end - FOLD_CHUNK:end])
        return chunks, _key(key, data[len(data) // FOLD_CHUNK * FOLD_CHUNK:], b"end")

    def longest(self, chunks: dict[int, bytes], end: bytes) -> Cached | None:
        """The state of this very prompt (its `end` key), else of its longest cached prefix among
        `chunks`; it becomes the most recent."""
        with self._lock:
            for key in [end] + [chunks[n] for n in sorted(chunks, reverse=True)]:
                hit = self._entries.get(key)
                if hit is not None:
                    self._entries.move_to_end(key)
                    self.hits, self.hit_tokens = self.hits + 1, self.hit_tokens + hit.tokens
                    return hit
            self.misses += 1
        return None

    def put(self, key: bytes, tokens: int, sums: np.ndarray, position: int, logits: np.ndarray) -> None:
        """Keep a copy of a state (sums (L, H)); the least recently used go while over the bound."""
        entry = Cached(tokens, np.array(sums, np.float32), int(position), np.array(logits, np.float32))
        with self._lock:
            old = self._entries.pop(key, None)
            self.nbytes -= old.nbytes if old is not None else 0
            self._entries[key], self.nbytes = entry, self.nbytes + entry.nbytes
            while self.nbytes > self.max_bytes and self._entries:
                self.nbytes -= self._entries.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
