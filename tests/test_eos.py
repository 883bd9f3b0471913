"""End of sequence, against the documented behaviour (README, docs/format.md), not the code:
- a row that samples eos ends there with finish_reason "stop", and eos is not text;
- with ignore_eos, eos is never sampled: byte 2 never appears, the row runs to its limit;
- pad and bos are never sampled.
The oracle model is the bundled one with +60 on the eos logit (conftest.eos_biased): by those
rules every row must end at once, at any temperature and with any filter."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from micromixer_edge.format import BOS_ID, EOS_ID, PAD_ID
from micromixer_edge.runtime.engine import Engine, GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.sampling import Sampler, SamplingParams, sample_rows

params = st.builds(SamplingParams, temperature=st.sampled_from([0.0, 0.3, 0.8, 1.5, 2.0]),
                   top_k=st.sampled_from([0, 1, 5, 40]), top_p=st.sampled_from([0.1, 0.9, 1.0]),
                   min_p=st.sampled_from([0.0, 0.05, 0.5]), repetition_penalty=st.sampled_from([1.0, 1.3]),
                   ignore_eos=st.booleans())


@pytest.mark.fast
@settings(max_examples=200, deadline=None)
@given(rows=st.lists(params, min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_a_row_whose_top_logit_is_eos_samples_eos_unless_it_ignores_eos(rows, seed):
    """Every path: the greedy shortcut, the batch pass and one row alone."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3, size=(len(rows), 256)).astype(np.float32)
    logits[:, EOS_ID] = logits.max() + 60
    logits[:, [PAD_ID, BOS_ID]] = logits.max() + 90  # never sampled, however likely
    recents = [rng.integers(0, 256, 20).tolist() for _ in rows]
    batch, alone = [Sampler(p, seed) for p in rows], [Sampler(p, seed) for p in rows]
    for a, b, recent in zip(batch, alone, recents):
        a.remember(recent)
        b.remember(recent)
    batch = sample_rows(batch, logits)
    alone = [s.sample(x) for s, x in zip(alone, logits)]
    want = [None if p.ignore_eos else EOS_ID for p in rows]
    for got in (batch, alone):
        for p, token, w in zip(rows, got, want):
            assert token not in (PAD_ID, BOS_ID)
            assert token == w if w is not None else token != EOS_ID


def _options(temperature, ignore_eos, n=40, seed=1):
    return GenerateOptions.of(max_new_tokens=n, seed=seed, temperature=temperature, ignore_eos=ignore_eos)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_engine_rows_end_with_stop_at_any_temperature(eos_models, kind):
    """One engine, rows alone and in a batch, ignore_eos on and off, temperature 0 to 2."""
    model = MixerModel(eos_models[kind])
    for batch in (False, True):
        engine = Engine(model)
        rows = []
        for i, t in enumerate((0.0, 0.5, 0.8, 1.2, 2.0)):
            for ignore in (False, True):
                rows.append(engine.add("Once upon a time", _options(t, ignore, seed=i)))
                if not batch:
                    list(engine.run())
        list(engine.run())
        for row in rows:
            if row.options.sampling.ignore_eos:
                assert row.finish_reason == "length" and EOS_ID not in row.stats.ids and len(row.stats.ids) == 40
            else:
                assert row.finish_reason == "stop" and row.stats.ids == [] and row.stats.new_tokens == 0


def _mixer_run(model, *args):
    return subprocess.run([sys.executable, "-c", "from micromixer_edge.runtime.cli import main; main()",
                           str(model), *args], capture_output=True, timeout=120)


def test_mixer_run_ends_at_eos_and_never_writes_it(eos_models):
    done = _mixer_run(eos_models["int8"], "-p", "Once upon a time", "-n", "50", "--seed", "1")
    assert done.returncode == 0 and done.stdout == b"\n"
    on = _mixer_run(eos_models["int8"], "-p", "Once upon a time", "-n", "50", "--seed", "1", "--ignore-eos")
    assert on.returncode == 0 and b"\x02" not in on.stdout and len(on.stdout) > 10


def test_the_server_ends_at_eos_and_never_writes_it(eos_models):
    pytest.importorskip("starlette")
    from serving import Served
    s = Served(eos_models["int8"])
    try:
        for t in (0, 0.8, 2.0):
            done = s.client.completions.create(model="m", prompt="Hi", max_tokens=50, temperature=t, seed=1)
            assert done.choices[0].finish_reason == "stop" and done.choices[0].text == ""
            on = s.client.completions.create(model="m", prompt="Hi", max_tokens=50, temperature=t, seed=1,
                                             extra_body={"ignore_eos": True})
            assert on.choices[0].finish_reason == "length" and "\x02" not in on.choices[0].text
            assert on.usage.completion_tokens == 50
    finally:
        assert s.stop() == 0


def test_most_sampled_stories_end_on_their_own(bundled):
    """20 seeded stories from the bundled int8 model at temperature 0.8, 2,000 bytes at most: the
    model gives eos 0.4-0.9 at a story's end, so most must stop before the limit; and the
    engine's rows (a batch), mixer-run and the server give the same text."""
    pytest.importorskip("starlette")
    from serving import Served
    model = MixerModel(bundled["int8"])
    engine = Engine(model)
    rows = [engine.add("Once upon a time", _options(0.8, False, 2000, seed)) for seed in range(20)]
    texts = {row.id: [] for row in rows}
    for row, piece in engine.run():
        texts[row.id].append(piece)
    reasons = [row.finish_reason for row in rows]
    assert reasons.count("stop") >= 15, reasons
    s = Served(bundled["int8"])
    try:
        for row in rows[:3]:
            want = "".join(texts[row.id])
            got = s.client.completions.create(model="m", prompt="Once upon a time", max_tokens=2000,
                                              temperature=0.8, seed=row.options.seed)
            assert got.choices[0].text == want and got.choices[0].finish_reason == row.finish_reason
            run = _mixer_run(bundled["int8"], "-p", "Once upon a time", "-n", "2000", "--seed", str(row.options.seed))
            assert run.stdout.decode() == want + "\n"
            assert model.generate("Once upon a time", 2000, seed=row.options.seed) == want
    finally:
        assert s.stop() == 0


@pytest.mark.fast
def test_negative_seeds_are_their_own_seeds():
    """A 64-bit signed seed: -5 and 5 are two seeds (random.Random alone would take |seed|)."""
    import random
    logits = np.random.default_rng(0).normal(scale=2, size=256).astype(np.float32)
    p = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a, b = Sampler(p, 5), Sampler(p, -5)
    assert [a.sample(logits) for _ in range(40)] != [b.sample(logits) for _ in range(40)]
    assert Sampler(p, 5).rng.random() == random.Random(5).random()  # seeds >= 0: as before


@pytest.mark.fast
@pytest.mark.parametrize("temperature", [1e-308, 5e-324, 1e-12])
def test_a_tiny_temperature_is_greedy_not_an_error(temperature):
    logits = np.random.default_rng(1).normal(scale=3, size=256).astype(np.float32)
    p = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)
    assert Sampler(p, 1).sample(logits) == int(np.argmax(logits))
