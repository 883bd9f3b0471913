"""Text generation on top of a model, a context mode, a sampler and a text stream."""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import numpy as np

from ..format import BOS_ID, DEFAULT_CONTEXT_MODE, EOS_ID
from .context import Context
from .model import MixerModel
from .sampling import Sampler, SamplingParams
from .textstream import TextStream


def encode_prompt(prompt: str | bytes) -> list[int]:
    """Bytes are the tokens: [bos] + utf8(prompt)."""
    data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
    return [BOS_ID, *data]


@dataclasses.dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ids: list[int] = dataclasses.field(default_factory=list)  # the generated token ids

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = 256
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    context: str = DEFAULT_CONTEXT_MODE

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError("max new tokens must be >= 0")


def stream(model: MixerModel, prompt: str | bytes, options: GenerateOptions = GenerateOptions(),
           stats: GenerationStats | None = None) -> Iterator[str]:
    """Yield text pieces as they are generated; `stats` (if given) is filled in as it goes."""
    stats = stats if stats is not None else GenerationStats()
    ids = encode_prompt(prompt)
    ctx, sampler = Context(model, 1, options.context), Sampler(options.sampling, options.seed)
    text, recent = TextStream(options.stop), ids[-options.sampling.repeat_last_n:]
    t0 = time.perf_counter()
    logits = ctx.feed_sequence(ids)[-1]
    stats.prompt_tokens, stats.prefill_s = len(ids), time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(options.max_new_tokens):
        token = sampler.sample(logits, recent)
        if token == EOS_ID and not options.sampling.ignore_eos:
            break
        stats.ids.append(token)
        stats.new_tokens += 1
        recent.append(token)
        piece = text.push(bytes((token,)))
        stats.decode_s = time.perf_counter() - t0
        if piece:
            yield piece
        if text.stopped:
            return
        if i + 1 < options.max_new_tokens:
            logits = ctx.feed_one(token)
        if len(recent) > 2 * options.sampling.repeat_last_n:
            del recent[:-options.sampling.repeat_last_n]
    stats.decode_s = time.perf_counter() - t0
    tail = text.finish()
    if tail:
        yield tail


def generate(model: MixerModel, prompt: str | bytes, options: GenerateOptions = GenerateOptions(),
             stats: GenerationStats | None = None) -> str:
    """The whole continuation as one string (the prompt is not included)."""
    return "".join(stream(model, prompt, options, stats))


def generate_batch(model: MixerModel, prompts: list[str | bytes],
                   options: GenerateOptions = GenerateOptions()) -> list[str]:
    """Several prompts at once: prompts are folded in row by row, then every decode step is one
    onnxruntime call for all rows. Rows that finish keep their text; their later bytes are dropped."""
    ctx, sampler = Context(model, len(prompts), options.context), Sampler(options.sampling, options.seed)
    encoded = [encode_prompt(p) for p in prompts]
    logits = np.stack([ctx.feed_sequence(ids, row=r)[-1] for r, ids in enumerate(encoded)])
    streams = [TextStream(options.stop) for _ in prompts]
    out, done = [[] for _ in prompts], np.zeros(len(prompts), bool)
    recent = [ids[-options.sampling.repeat_last_n:] for ids in encoded]
    for i in range(options.max_new_tokens):
        tokens = [sampler.sample(logits[r], recent[r]) if not done[r] else EOS_ID
                  for r in range(len(prompts))]
        for r, token in enumerate(tokens):
            if done[r]:
                continue
            if token == EOS_ID and not options.sampling.ignore_eos:
                done[r] = True
                continue
            recent[r].append(token)
            out[r].append(streams[r].push(bytes((token,))))
            done[r] = streams[r].stopped
        if done.all() or i + 1 == options.max_new_tokens:
            break
        logits = ctx.feed(tokens)
    return ["".join(pieces) + s.finish() for pieces, s in zip(out, streams)]
