"""Text generation: thin uses of the engine (runtime/engine.py), one row or many."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from .engine import Engine, GenerateOptions, GenerationStats

if TYPE_CHECKING:
    from .model import MixerModel

__all__ = ["stream", "generate", "generate_batch"]


def stream(model: MixerModel, prompt: str | bytes, options: GenerateOptions = GenerateOptions(),
           stats: GenerationStats | None = None) -> Iterator[str]:
    """Yield text pieces as they are generated; `stats` (if given) is filled in as it goes. A row
    that fails (its constraint, say) raises at its end, after the text it made."""
    engine = Engine(model)
    row = engine.add(prompt, options, stats)
    for _, piece in engine.run():
        yield piece
    row.check()


def generate(model: MixerModel, prompt: str | bytes, options: GenerateOptions = GenerateOptions(),
             stats: GenerationStats | None = None) -> str:
    """The whole continuation as one string (the prompt is not included)."""
    return "".join(stream(model, prompt, options, stats))


def generate_batch(model: MixerModel, prompts: list[str | bytes],
                   options: GenerateOptions = GenerateOptions()) -> list[str]:
    """Several prompts at once, every decode step one call for all rows; row i is what
    generate(prompts[i]) gives (each row has its own sampler, seeded with options.seed)."""
    engine = Engine(model)
    rows = [engine.add(p, options) for p in prompts]
    out = {row.id: [] for row in rows}
    for row, piece in engine.run():
        out[row.id].append(piece)
    for row in rows:
        row.check()
    return ["".join(out[row.id]) for row in rows]
