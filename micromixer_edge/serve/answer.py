"""How an answer is written, and what it can cost: OpenAI's completion and chat completion shapes,
a whole answer encoded in pieces (never one long json.dumps on the event loop), and the bound on
an answer's size that a request is held to before it runs.

A logprobs object lists one entry per byte: 32 choices of 4,096 bytes with 20 alternatives each
are 159 MB of JSON. Its big lists are `Blocks`: encoded a block of entries at a time, so a whole
answer goes out in pieces with the event loop free between them, and a stream's chunk costs what
its few entries cost.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from typing import Any, Callable, Iterator, Sequence

from ..format import EOS_ID
from ..runtime.logprobs import Entry, token_text

BLOCK = 256                # entries encoded at a time
PIECE_BYTES = 1 << 16      # a whole answer is sent in pieces of about this many characters
HOLD_SECONDS = 0.005       # encoding gives the event loop a turn at least this often
TEXT_BYTES = 6             # JSON's most for one byte of text: a control byte is \u00XX
ENVELOPE_BYTES = 512       # a choice's fields but its text and logprobs, and the answer's own, at most


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A JSON array of `convert(item)` for each item, made a block at a time when it is encoded."""
    items: Sequence
    convert: Callable[[Any], Any]

    def materialize(self) -> list:
        return [self.convert(x) for x in self.items]


def _default(value):
    if isinstance(value, Blocks):
        return value.materialize()
    raise TypeError(f"{type(value).__name__} is not JSON")


# (allow_nan=False as Starlette's JSONResponse: a NaN is a 500, never invalid JSON)
dumps = functools.partial(json.dumps, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def pieces(value) -> Iterator[str]:
    """`value` as JSON text, in pieces: dicts and lists item by item, Blocks a block at a time."""
    if isinstance(value, dict):
        for i, (key, item) in enumerate(value.items()):
            yield ("{" if i == 0 else ",") + json.dumps(key) + ":"
            yield from pieces(item)
        yield "}" if value else "{}"
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield "[" if i == 0 else ","
            yield from pieces(item)
        yield "]"
    elif isinstance(value, Blocks):
        yield "["
        for b in range(0, len(value.items), BLOCK):
            yield ("" if b == 0 else ",") + dumps([value.convert(x) for x in value.items[b:b + BLOCK]])[1:-1]
        yield "]"
    else:
        yield dumps(value)


async def paced(value, lane: asyncio.Lock):
    """`value` as JSON text for a StreamingResponse, in pieces of about PIECE_BYTES or of
    HOLD_SECONDS of encoding, whichever comes first. Encoding takes turns in `lane` (the server's
    one lock, FIFO), so however many answers are written at once, the event loop runs its other
    work (/health, the streams) at least every HOLD_SECONDS; the lane is not held while a piece
    waits for a slow reader."""
    parts, done = pieces(value), False
    while not done:
        await asyncio.sleep(0)  # (sending a piece need not suspend: the loop's turn is taken here)
        async with lane:
            buffer, size, since, done = [], 0, time.perf_counter(), True
            for piece in parts:
                buffer.append(piece)
                size += len(piece)
                if size >= PIECE_BYTES or time.perf_counter() - since > HOLD_SECONDS:
                    done = False
                    break
        yield "".join(buffer)


@dataclasses.dataclass(frozen=True)
class Shape:
    """How an endpoint writes its answer: OpenAI's completion or chat completion objects."""
    id_prefix: str
    whole_object: str
    chunk_object: str
    chat: bool

    def whole(self, index: int, text: str, finish: str, logprobs: dict | None = None) -> dict:
        body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {"index": index, **body, "logprobs": logprobs, "finish_reason": finish}

    def piece(self, index: int, text: str, finish: str | None, first: bool, logprobs: dict | None = None) -> dict:
        if not self.chat:
            return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def logprobs(self, entries: list[Entry], k: int | None) -> dict | None:
        """OpenAI's logprobs object of these entries (runtime/logprobs.py); None without logprobs.
        Completions: parallel lists, top_logprobs the k most likely and the byte itself (up to
        k + 1, as OpenAI documents), the end-of-sequence byte listed as vLLM lists it; chat: one
        object per byte of the content, exactly k alternatives."""
        if k is None:
            return None
        if self.chat:
            def one(t, lp):
                return {"token": token_text(t), "logprob": lp, "bytes": [t]}
            return {"content": Blocks([e for e in entries if e.token != EOS_ID],
                                      lambda e: {**one(e.token, e.logprob), "top_logprobs": [one(*a) for a in e.top[:k]]}),
                    "refusal": None}
        return {"tokens": Blocks(entries, lambda e: token_text(e.token)),
                "token_logprobs": Blocks(entries, lambda e: e.logprob),
                "top_logprobs": Blocks(entries, lambda e: None if e.logprob is None else
                                       {token_text(t): lp for t, lp in e.top}),
                "text_offset": Blocks(entries, lambda e: e.offset)}

    @functools.lru_cache(maxsize=None)
    def entry_bytes(self, k: int) -> int:
        """What one byte's logprob entry adds to an answer at most: measured on this very encoder
        with the longest values an entry can hold (non-ASCII bytes, the longest floats, distinct
        alternatives, a six-digit offset)."""
        worst = -1.2345678901234567e-300
        entry = Entry(0xFF, worst, tuple((0x80 + i, worst) for i in range(k + 1)), 999_999)
        one, two = (len(dumps(self.logprobs([entry] * m, k))) for m in (1, 2))
        return two - one


def usage(stats: list) -> dict:
    """OpenAI's usage object of a request's choices (their GenerationStats): prompt tokens (bos
    and bytes; those resumed from the prompt cache in its details), generated tokens, their sum."""
    prompt, new = sum(s.prompt_tokens for s in stats), sum(s.new_tokens for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new,
            "prompt_tokens_details": {"cached_tokens": sum(s.cached_tokens for s in stats)}}


TEXT = Shape("cmpl-", "text_completion", "text_completion", chat=False)
CHAT = Shape("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)
SHAPES = {"text": TEXT, "chat": CHAT}


def answer_bytes(endpoint: str, prompt_sizes: list[int], n: int, max_tokens: int, logprobs: int | None,
                 echo: bool, prompt_logprobs: bool) -> int:
    """The most JSON an answer can hold, whole or streamed (its chunks' envelopes aside): per
    choice, its text at TEXT_BYTES a byte (the prompt's too with echo), and with logprobs an entry
    per generated byte and the end-of-sequence one, and per prompt byte with prompt logprobs."""
    entry = 0 if logprobs is None else SHAPES[endpoint].entry_bytes(logprobs)
    total = 0
    for size in prompt_sizes:
        echoed = size if echo else 0
        entries = (max_tokens + 1 + (size + 1 if prompt_logprobs else 0)) if logprobs is not None else 0
        total += n * (ENVELOPE_BYTES + TEXT_BYTES * (echoed + max_tokens) + entry * entries)
    return total + ENVELOPE_BYTES


class Budget:
    """The JSON all answers in flight may hold (--answers-in-flight-mb): a request holds its
    estimate from the moment it is queued until its response has been sent (ReleaseAnswers). Used
    on the event loop only."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, nbytes: int) -> bool:
        if self.held + nbytes > self.limit:
            return False
        self.held += nbytes
        return True

    def give_back(self, nbytes: int) -> None:
        self.held -= nbytes


HELD = "micromixer.answer_bytes"  # where a request's share of the budget is noted (its scope["state"])


class ReleaseAnswers:
    """ASGI middleware: once a request's response has gone out (or failed, or its client left), its
    share of the budget is given back, whatever the response was."""

    def __init__(self, app, budget: Budget):
        self.app, self.budget = app, budget

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.give_back(scope.get("state", {}).pop(HELD, 0))
