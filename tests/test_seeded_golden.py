"""Seeded output, recorded before the decode loop was rebuilt (issue 27), and held since.

Two tiers, both recorded by `python tests/test_seeded_golden.py record INT8.onnx` from main at
d8aa5fb (2026-12-06) into tests/data/seeded_golden.json:
- the sampler alone, over synthetic logits (numpy's seeded normal, some rounded to make ties):
  every sampling option, rows alone and in batches; machine-independent;
- the engine on the bundled default int8 (its logits are the same bits on AVX2 and VNNI CPUs,
  tests/test_faithful_int8.py): every sampling option, stop strings, context modes past W,
  logprobs, alone, all in one batch, resumed from snapshots, and snapshots written then.
The only arithmetic that may differ: exp's last bit (libm's against numpy's), which changes a draw
only if the uniform number falls within an ulp of a boundary.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from micromixer_edge.runtime.engine import Engine, GenerateOptions
from micromixer_edge.runtime.sampling import Sampler, SamplingParams, sample_rows

GOLDEN = Path(__file__).parent / "data" / "seeded_golden.json"

VARIANTS = {  # name -> GenerateOptions.of keyword arguments
    "default": {},
    "hot-unfiltered": dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0),
    "top-k-5": dict(temperature=1.0, top_k=5, min_p=0.0),
    "top-p-0.5": dict(temperature=1.1, top_p=0.5, min_p=0.0, top_k=0),
    "min-p-0.2": dict(temperature=0.9, min_p=0.2),
    "repetition": dict(repetition_penalty=1.3, repeat_last_n=16),
    "presence-frequency": dict(presence_penalty=0.8, frequency_penalty=0.5),
    "logit-bias": dict(logit_bias=((32, -3.0), (101, 2.0), (2, -100.0))),
    "ignore-eos": dict(ignore_eos=True, temperature=1.0),
    "greedy-penalized": dict(temperature=0.0, repetition_penalty=1.5, presence_penalty=0.3),
    "stop": dict(stop=("and", ".")),
    "halve": dict(context="halve", ignore_eos=True),
    "window": dict(context="window", ignore_eos=True, temperature=0.6),
    "unbounded": dict(context="unbounded", ignore_eos=True),
    "logprobs": dict(logprobs=3),
}
PROMPTS = ["Once upon a time", "The dog", "Lily and Ben went to the park. They saw", "\u00e9t\u00e9 \u2603"]
LONG = "One day a little girl named Sue went to the big park with her mom. " * 3  # past W (256) with the bytes made
SEEDS = (0, 7, 2**40 + 3)
NEW = 48


def cases() -> list[tuple[str, str, int, GenerateOptions]]:
    out = []
    for name, kw in VARIANTS.items():
        kw = dict(kw)
        new = 120 if name in ("halve", "window", "unbounded") else NEW
        for p, prompt in enumerate(PROMPTS):
            prompt = LONG + prompt if name in ("halve", "window", "unbounded") else prompt
            for seed in SEEDS:
                out.append((name, prompt, seed, GenerateOptions.of(max_new_tokens=new, seed=seed, **kw)))
    return out


def run_rows(engine: Engine, jobs: list[tuple[str, GenerateOptions]]) -> list[dict]:
    rows = [engine.add(prompt, options) for prompt, options in jobs]
    texts = [""] * len(rows)
    index = {r.id: i for i, r in enumerate(rows)}
    for row, piece in engine.run():
        texts[index[row.id]] += piece
    return [result(r, t) for r, t in zip(rows, texts)]


def result(row, text: str) -> dict:
    out = {"ids": list(row.stats.ids), "text": text, "finish": row.finish_reason}
    if row.trail is not None:
        out["logprobs"] = [[e.token, e.logprob, [list(t) for t in e.top]] for e in row.take_logprobs()]
    return out


def resumed(model, prompt: str, options: GenerateOptions, cut: int) -> tuple[dict, str]:
    """The row run to `cut` bytes, snapshotted, and resumed in a fresh engine to its end."""
    engine = Engine(model)
    row, text = engine.add(prompt, options), ""
    while not row.done and row.stats.new_tokens < cut:
        engine.step()
        text += row.take_text()
    blob = engine.snapshot(row)
    if row.done:
        return {"ids": list(row.stats.ids), "text": text + row.take_text(), "finish": row.finish_reason}, ""
    engine.cancel(row)
    second = Engine(model)
    rest = second.restore(blob, dataclasses.replace(options, max_new_tokens=options.max_new_tokens - cut))
    tail = run_rows_existing(second, rest)
    return {"ids": list(row.stats.ids) + list(rest.stats.ids), "text": text + tail, "finish": rest.finish_reason}, \
        base64.b64encode(blob).decode()


def run_rows_existing(engine: Engine, row) -> str:
    return "".join(piece for _, piece in engine.run())


def sampler_cases() -> list[dict]:
    """Synthetic logits: 6 steps of a batch of rows with mixed parameters; numpy's seeded normal."""
    out = []
    names = list(VARIANTS)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        kws = [VARIANTS[names[(seed + i) % len(names)]] for i in range(1 + seed % 9)]
        params = [SamplingParams(**{k: v for k, v in kw.items() if k not in ("stop", "context", "logprobs")})
                  for kw in kws]
        ties = seed % 3 == 0
        out.append({"seed": seed, "variants": [names[(seed + i) % len(names)] for i in range(len(kws))],
                    "ties": ties, "params": params})
    return out


def sample_case(case: dict, alone: bool) -> list[list[int]]:
    """Six steps of the case's rows: each row's window starts with 20 random bytes, then takes
    what it draws (recorded with the API of the day: sample_rows(samplers, logits, recents))."""
    rng = np.random.default_rng(case["seed"])
    params = case["params"]
    samplers = [Sampler(p, case["seed"] * 100 + i) for i, p in enumerate(params)]
    for s in samplers:
        s.remember(rng.integers(0, 256, 20).tolist())
    drawn = []
    for _ in range(6):
        logits = rng.normal(scale=3, size=(len(params), 256)).astype(np.float32)
        logits = np.round(logits) if case["ties"] else logits
        if alone:
            tokens = [sample_rows([s], logits[i:i + 1])[0] for i, s in enumerate(samplers)]
        else:
            tokens = sample_rows(samplers, logits)
        for token, s in zip(tokens, samplers):
            s.accepted(token)
            s.remember([token])
        drawn.append(tokens)
    return drawn


def record(model_path: str) -> None:
    from micromixer_edge.runtime.model import MixerModel
    model = MixerModel(model_path)
    engine_cases = []
    for name, prompt, seed, options in cases():
        got = run_rows(Engine(model), [(prompt, options)])[0]
        engine_cases.append({"variant": name, "prompt": prompt, "seed": seed, **got})
    snaps = []
    for i, (name, prompt, seed, options) in enumerate(cases()[::9]):
        got, blob = resumed(model, prompt, options, 17)  # (a third of the snapshots kept: ~15 KB each)
        snaps.append({"variant": name, "prompt": prompt, "seed": seed, "cut": 17, "snapshot": blob if i % 3 == 0 else "",
                      **got})
    samples = [{"seed": c["seed"], "variants": c["variants"], "ties": c["ties"], "tokens": sample_case(c, False)}
               for c in sampler_cases()]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"model_sha256": model.sha256, "engine": engine_cases, "resumed": snaps,
                                  "sampler": samples}, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(engine_cases)} engine cases, {len(snaps)} resumed, {len(samples)} sampler cases -> {GOLDEN}")


# --- the tests ------------------------------------------------------------------------------------
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _options(case: dict) -> GenerateOptions:
    return dict((f"{n}|{p}|{s}", o) for n, p, s, o in cases())[f"{case['variant']}|{case['prompt']}|{case['seed']}"]


@pytest.mark.fast
def test_the_sampler_draws_the_recorded_bytes_alone_and_in_batches():
    recorded = golden()["sampler"]
    for case, want in zip(sampler_cases(), recorded):
        assert (case["seed"], case["variants"]) == (want["seed"], want["variants"])
        assert sample_case(case, False) == want["tokens"], case["seed"]
        assert sample_case(case, True) == want["tokens"], case["seed"]


@pytest.fixture(scope="module")
def int8(bundled):
    from micromixer_edge.runtime.model import MixerModel
    model = MixerModel(bundled["int8"])
    assert model.sha256 == golden()["model_sha256"], "the bundled int8 is not the file the golden was recorded on"
    return model


def _same(got: dict, want: dict, label) -> None:
    assert (got["ids"], got["text"], got["finish"]) == (want["ids"], want["text"], want["finish"]), label
    if "logprobs" in want:  # the bytes and alternatives exactly; numpy's exp and log may differ in the last bits
        assert [(t, [b for b, _ in top]) for t, _, top in got["logprobs"]] == \
            [(t, [b for b, _ in top]) for t, _, top in want["logprobs"]], label
        np.testing.assert_allclose([lp for _, lp, _ in got["logprobs"]], [lp for _, lp, _ in want["logprobs"]],
                                   rtol=0, atol=1e-9)


def test_the_engine_makes_the_recorded_bytes_alone_and_in_one_batch(int8):
    want = golden()["engine"]
    jobs = [(c["prompt"], _options(c)) for c in want]
    for case, (prompt, options) in zip(want[::5], jobs[::5]):  # alone (every fifth: the batch has all)
        _same(run_rows(Engine(int8), [(prompt, options)])[0], case, (case["variant"], prompt, case["seed"]))
    batch = run_rows(Engine(int8), jobs)
    for case, got in zip(want, batch):
        _same(got, case, (case["variant"], case["prompt"], case["seed"], "batch"))


def test_resumed_rows_and_old_snapshots_make_the_recorded_bytes(int8):
    for case in golden()["resumed"]:
        options = _options(case)
        got, _ = resumed(int8, case["prompt"], options, case["cut"])
        _same(got, case, (case["variant"], case["prompt"], case["seed"]))
        if case["snapshot"]:  # the snapshot written before the change, resumed now
            engine = Engine(int8)
            row = engine.restore(base64.b64decode(case["snapshot"]),
                                 dataclasses.replace(options, max_new_tokens=options.max_new_tokens - case["cut"]))
            tail = "".join(piece for _, piece in engine.run())
            assert case["ids"][case["cut"]:] == list(row.stats.ids), case["variant"]
            assert case["text"].endswith(tail)


if __name__ == "__main__" and sys.argv[1:2] == ["record"]:
    record(sys.argv[2])
