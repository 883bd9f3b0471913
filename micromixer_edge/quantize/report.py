"""What quantization cost and gained: sizes, bits/byte, KL divergence, agreement, speed."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..runtime.context import DEFAULT_CONTEXT_MODE, sequence_logits
from ..codec import encode_story, read_stories
from ..runtime.logprobs import log_softmax
from ..runtime.model import MixerModel
from ..runtime.selftest import greedy_ids
from ..runtime.timing import step_tokens_per_s

GREEDY_PROMPTS = ("Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
                  "Tom had a big red", "The sun was", "Mom said,", "In the park")


@dataclasses.dataclass
class QuantReport:
    float_model: str
    quant_model: str
    quantization: str
    float_bytes: int
    quant_bytes: int
    size_ratio: float
    text: str
    stories: int
    tokens: int
    float_bits_per_byte: float
    quant_bits_per_byte: float
    bits_per_byte_change: float  # relative: quant / float - 1
    mean_kl_nats: float          # mean KL(float || quant) of the next-byte distributions
    top1_agreement: float        # fraction of positions where both argmaxes agree
    greedy_prompts: int
    greedy_tokens: int
    greedy_identical: float      # fraction of prompts whose greedy continuations are identical
    greedy_prefix_agreement: float  # mean fraction of each continuation before the first divergence
    float_tokens_per_s: float
    quant_tokens_per_s: float
    float_invariance: tuple[float, float]  # (batch, chunk) max abs logit difference, see invariance()
    quant_invariance: tuple[float, float]

    def table(self) -> str:
        rows = [("file size", f"{self.float_bytes / 1e6:.2f} MB", f"{self.quant_bytes / 1e6:.2f} MB",
                 f"{self.size_ratio:.1%} of float"),
                ("bits/byte", f"{self.float_bits_per_byte:.4f}", f"{self.quant_bits_per_byte:.4f}",
                 f"{self.bits_per_byte_change:+.2%}"),
                ("step tokens/s", f"{self.float_tokens_per_s:,.0f}", f"{self.quant_tokens_per_s:,.0f}",
                 f"{self.quant_tokens_per_s / self.float_tokens_per_s:.2f}x")]
        lines = [f"{'':<16}{'float':>12}{self.quantization:>20}   change"]
        lines += [f"{a:<16}{b:>12}{c:>20}   {d}" for a, b, c, d in rows]
        lines += [f"mean KL divergence  {self.mean_kl_nats:.5f} nats/byte over {self.tokens:,} positions "
                  f"of {self.stories} stories ({Path(self.text).name})",
                  f"top-1 agreement     {self.top1_agreement:.2%}",
                  f"invariance          max abs logit diff, a row in a batch vs alone: {self.quant_invariance[0]:.2g} "
                  f"(float {self.float_invariance[0]:.2g}); one call vs chunks vs byte by byte: "
                  f"{self.quant_invariance[1]:.2g} (float {self.float_invariance[1]:.2g})",
                  f"greedy agreement    {round(self.greedy_identical * self.greedy_prompts)} of {self.greedy_prompts} "
                  f"prompts identical "
                  f"over {self.greedy_tokens} bytes; {self.greedy_prefix_agreement:.1%} agree before divergence"]
        return "\n".join(lines)


def _story_logprobs(model: MixerModel, ids: np.ndarray) -> np.ndarray:
    return log_softmax(sequence_logits(model, ids[:-1], DEFAULT_CONTEXT_MODE))


def compare_on_text(fm, qm, stories):
    """Teacher-forced comparison over the stories: (nats_f, nats_q, kl sum, top1 hits, count)."""
    nf = nq = kl = 0.0
    hits = count = 0
    for story in stories:
        ids = encode_story(story)
        lf, lq = _story_logprobs(fm, ids), _story_logprobs(qm, ids)
        rows, targets = np.arange(len(ids) - 1), ids[1:]
        nf -= lf[rows, targets].sum()
        nq -= lq[rows, targets].sum()
        kl += (np.exp(lf) * (lf - lq)).sum()
        hits += int((lf.argmax(-1) == lq.argmax(-1)).sum())
        count += len(targets)
    return nf, nq, kl, hits, count


def _greedy_agreement(fm, qm, n: int) -> tuple[float, float]:
    same, prefix = 0, 0.0
    for prompt in GREEDY_PROMPTS:
        a, b = (greedy_ids(m, prompt, n, DEFAULT_CONTEXT_MODE) for m in (fm, qm))
        same += a == b
        prefix += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), n) / n
    return same / len(GREEDY_PROMPTS), prefix / len(GREEDY_PROMPTS)


def invariance(model: MixerModel, prompts=GREEDY_PROMPTS, length: int = 40) -> tuple[float, float]:
    """(batch, chunk): how far a row's logits move when it shares a call with other rows, and
    when its sequence is fed in one call, in chunks of 1 to 7 bytes, or byte by byte."""
    rows = np.array([[fmt.BOS_ID, *((p + " ") * length).encode()[:length - 1]] for p in prompts])
    together, _ = model.prefill(rows)
    batch = max(float(np.abs(together[i] - model.prefill(r)[0][0]).max()) for i, r in enumerate(rows))
    chunk = 0.0
    for size in (1, 3, 7):
        state, parts = model.new_state(len(rows)), []
        for i in range(0, length, size):
            logits, state = model.run(rows[:, i:i + size], state)
            parts.append(logits)
        chunk = max(chunk, float(np.abs(np.concatenate(parts, 1) - together).max()))
    return batch, chunk


def build_report(float_path: str | os.PathLike, quant_path: str | os.PathLike, text_path: str | os.PathLike,
                 limit: int | None = None, greedy_tokens: int = 128) -> QuantReport:
    fm, qm = MixerModel(float_path), MixerModel(quant_path)
    stories = read_stories(text_path)[:limit]
    nf, nq, kl, hits, count = compare_on_text(fm, qm, stories)
    bf, bq = nf / count / math.log(2), nq / count / math.log(2)
    same, prefix = _greedy_agreement(fm, qm, greedy_tokens)
    fb, qb = Path(float_path).stat().st_size, Path(quant_path).stat().st_size
    float_rate, quant_rate = step_tokens_per_s([fm, qm])
    return QuantReport(
        float_model=str(float_path), quant_model=str(quant_path), quantization=qm.meta["quantization"],
        float_bytes=fb, quant_bytes=qb, size_ratio=qb / fb, text=str(text_path), stories=len(stories),
        tokens=count, float_bits_per_byte=bf, quant_bits_per_byte=bq, bits_per_byte_change=bq / bf - 1,
        mean_kl_nats=kl / count, top1_agreement=hits / count, greedy_prompts=len(GREEDY_PROMPTS),
        greedy_tokens=greedy_tokens, greedy_identical=same, greedy_prefix_agreement=prefix,
        float_tokens_per_s=float_rate, quant_tokens_per_s=quant_rate,
        float_invariance=invariance(fm), quant_invariance=invariance(qm))
