"""The decode engine: a row's bytes do not depend on the rows beside it or on when it joined; a
long prompt folds only what its context mode keeps; snapshots resume and fork exactly.

Truths: the row alone; the context modes as the README defines them, token by token
(tests/oracle.py); one uninterrupted run."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from micromixer_edge import MixerModel as TopLevel
from micromixer_edge.runtime.context import CONTEXT_MODES
from oracle import ContextOracle
from micromixer_edge.runtime.engine import Engine, GenerateOptions, fold
from micromixer_edge.runtime.generate import generate, generate_batch, stream
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.codec import encode_prompt

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small(export_file):
    return MixerModel(export_file("brief_100k_model"))  # W = 64: every mode's boundary is near


def _texts(engine, rows):
    out = {r.id: [] for r in rows}
    for row, piece in engine.run():
        out[row.id].append(piece)
    return ["".join(out[r.id]) for r in rows]


row_spec = st.tuples(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=0, max_size=90),
                     st.sampled_from(CONTEXT_MODES), st.one_of(st.none(), st.integers(0, 2**31)),
                     st.integers(1, 160))


def _options(spec):
    _, mode, seed, n = spec
    sampling = {"temperature": 0} if seed is None else {"temperature": 0.9, "repetition_penalty": 1.2}
    return GenerateOptions.of(max_new_tokens=n, seed=seed, context=mode, ignore_eos=True, **sampling)


@SETTINGS
@given(specs=st.lists(row_spec, min_size=1, max_size=8), join_after=st.integers(0, 40), split=st.integers(0, 8))
def test_a_row_is_the_same_alone_in_a_batch_or_joining_late(small, specs, join_after, split):
    alone = [generate(small, s[0], _options(s)) for s in specs]
    engine = Engine(small)
    assert _texts(engine, [engine.add(s[0], _options(s)) for s in specs]) == alone
    engine = Engine(small)  # some rows first; the rest join after a few steps, while others finish
    first = [engine.add(s[0], _options(s)) for s in specs[:split]]
    out = {r.id: [] for r in first}
    for _ in range(join_after):
        for row in engine.step():
            out[row.id].extend(row.pieces)
            row.pieces.clear()
    late = [engine.add(s[0], _options(s)) for s in specs[split:]]
    out.update({r.id: [] for r in late})
    for row, piece in engine.run():
        out[row.id].append(piece)
    assert ["".join(out[r.id]) for r in first + late] == alone


@pytest.mark.parametrize("mode", CONTEXT_MODES)
@pytest.mark.parametrize("length", [1, 31, 32, 33, 63, 64, 65, 96, 97, 128, 129, 300, 1001])
def test_a_long_prompt_folds_only_what_the_mode_keeps(small, mode, length):
    """fold() == feeding the prompt token by token under the mode's definition."""
    ids = encode_prompt(bytes(np.random.default_rng(length).integers(32, 127, length - 1).tolist()))
    ctx = ContextOracle(small, mode)
    want = ctx.feed(ids)[-1]
    logits, state = fold(small, ids, mode)
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)
    # sums reach ~300 after 1,000 unbounded tokens: a float32 ulp there is 3e-5
    np.testing.assert_allclose(state.sums, ctx.state.sums, atol=1e-5, rtol=2e-7)
    assert state.position.tolist() == ctx.state.position.tolist()


@pytest.mark.parametrize("mode", CONTEXT_MODES)
@pytest.mark.parametrize("seed", [None, 11])
def test_decoding_matches_todays_loop(small, mode, seed):
    """The engine gives the bytes of a plain loop over the modes' definition, token by token."""
    options = _options(("Once upon a time", mode, seed, 400))
    from micromixer_edge.runtime.sampling import Sampler
    ctx, sampler = ContextOracle(small, mode), Sampler(options.sampling, seed)
    ids = encode_prompt("Once upon a time")
    logits, out = ctx.feed(ids)[-1], []
    sampler.remember(ids)  # (the repetition window: the prompt, then each byte drawn)
    for _ in range(400):
        token = sampler.sample(logits)
        out.append(token)
        sampler.accepted(token)
        sampler.remember([token])
        logits = ctx.feed([token])[0]
    engine = Engine(small)
    row = engine.add("Once upon a time", options)
    _texts(engine, [row])
    assert row.stats.ids == out


@pytest.mark.parametrize("mode", CONTEXT_MODES)
@pytest.mark.parametrize("seed", [None, 5])
@pytest.mark.parametrize("n", [10, 63, 64, 100])
def test_save_then_resume_equals_one_run(small, mode, seed, n):
    spec = ("Lily and Ben", mode, seed, n + 90)
    whole = generate(small, spec[0], _options(spec))
    engine = Engine(small)
    row = engine.add(spec[0], _options(spec[:3] + (n,)))
    first = _texts(engine, [row])[0]
    data = engine.snapshot(row)
    assert isinstance(data, bytes)
    again = Engine(small)
    second = _texts(again, [again.restore(data, _options(spec[:3] + (90,)))])[0]
    assert first + second == whole


def test_fork_continues_without_refolding(small):
    """Forks of one prefilled row with other seeds equal fresh runs with those seeds."""
    base = GenerateOptions.of(max_new_tokens=0, context="halve")
    engine = Engine(small)
    row = engine.add("The little dog " * 8, base)
    forks = [engine.fork(row, GenerateOptions.of(max_new_tokens=120, seed=s, context="halve")) for s in (1, 2, 3)]
    assert _texts(engine, forks) == [generate(small, "The little dog " * 8,
                                              GenerateOptions.of(max_new_tokens=120, seed=s)) for s in (1, 2, 3)]


def test_one_line_api(bundled):
    model = TopLevel(bundled["int8"])
    kw = dict(max_new_tokens=80, temperature=0.7, top_k=30, seed=4, stop=["\n\n"], context="halve")
    text = model.generate("Once upon a time", **kw)
    assert text == "".join(model.generate("Once upon a time", stream=True, **kw))
    prompts = ["Once upon a time", "Lily and Ben", "The sun was"]
    assert model.generate_batch(prompts, **kw) == [model.generate(p, **kw) for p in prompts]
    assert generate_batch(model, prompts, GenerateOptions.of(**kw)) == model.generate_batch(prompts, **kw)
    assert "".join(stream(model, "Lily", GenerateOptions.of(max_new_tokens=30, temperature=0))) == \
        model.generate("Lily", max_new_tokens=30, temperature=0)


def test_int8_rows_in_a_batch_equal_alone(bundled):
    """The default int8 on the bundled weights: 8 rows with their own seeds, together and alone."""
    model = MixerModel(bundled["int8"])
    prompts = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
               "Tom had a big red", "The sun was", "Mom said,", "In the park"]
    opts = [GenerateOptions.of(max_new_tokens=300, seed=i, context=m) for i, m in
            zip(range(8), ["halve", "window", "unbounded"] * 3)]
    engine = Engine(model)
    together = _texts(engine, [engine.add(p, o) for p, o in zip(prompts, opts)])
    assert together == [generate(model, p, o) for p, o in zip(prompts, opts)]


@pytest.mark.parametrize("mode", CONTEXT_MODES)
@pytest.mark.parametrize("sampling", [["-t", "0"], ["--seed", "9", "--repetition-penalty", "1.2"]])
def test_cli_save_then_load_prints_one_runs_bytes(export_file, tmp_path, mode, sampling):
    """mixer-run -n 70 --save-state, then --load-state -n 80 (without --seed: the saved generator
    goes on): the two outputs make the one of -n 150 (W = 64: both runs cross the boundary); the
    state file appears atomically. A resumed run prints the text it adds (-p's, then the new)."""
    import subprocess
    import sys
    model = str(export_file("brief_100k_model"))
    code = "from micromixer_edge.runtime.cli import main; main()"

    def run(*args, flags=sampling):
        proc = subprocess.run([sys.executable, "-c", code, model, "--context", mode, "--ignore-eos", *flags, *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.removesuffix("\n")
    whole = run("-p", "The little dog", "-n", "150")
    first = run("-p", "The little dog", "-n", "70", "--save-state", str(tmp_path / "s.bin"))
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]
    going_on = sampling[2:] if sampling[0] == "--seed" else sampling
    second = run("--load-state", str(tmp_path / "s.bin"), "-n", "80", flags=going_on)
    assert first + second == whole
    more = run("--load-state", str(tmp_path / "s.bin"), "-p", " and the cat", "-n", "40", flags=going_on)
    assert more.startswith(" and the cat")
    more = more.removeprefix(" and the cat")
    m = MixerModel(model)
    if sampling[0] == "-t":  # greedy: the same as one prompt of all that text
        assert more == generate(m, "The little dog" + first + " and the cat",
                                GenerateOptions.of(max_new_tokens=40, context=mode, ignore_eos=True, temperature=0))
    else:  # sampled: the snapshot's generator goes on; the engine resumes it with the same bytes
        engine = Engine(m)
        row = engine.restore((tmp_path / "s.bin").read_bytes(), GenerateOptions.of(
            max_new_tokens=40, context=mode, ignore_eos=True, repetition_penalty=1.2), list(b" and the cat"))
        assert more == _texts(engine, [row])[0] and len(more.encode()) == 40
        reseeded = [run("--load-state", str(tmp_path / "s.bin"), "-n", "60", "--seed", str(s)) for s in (1, 2, 1)]
        assert reseeded[0] == reseeded[2] != reseeded[1]  # --seed starts the saved generator afresh


@pytest.mark.parametrize("rows", [1, 2])
def test_a_failing_sampler_ends_its_row_with_error_alone_or_in_a_batch(small, monkeypatch, rows):
    """run()'s one-row path and step() treat a row's own failure alike: the row ends with
    finish_reason "error" and the loop returns (it escaped run() on the one-row path before)."""
    from micromixer_edge.runtime import sampling
    real = sampling.Sampler.uniform

    def uniform(self):
        self.draws = getattr(self, "draws", 0) + 1
        if getattr(self, "doomed", False) and self.draws > 5:  # (past the first step)
            raise RuntimeError("injected")
        return real(self)
    monkeypatch.setattr(sampling.Sampler, "uniform", uniform)
    engine = Engine(small)
    made = [engine.add("Once", GenerateOptions.of(max_new_tokens=20, seed=i, ignore_eos=True)) for i in range(rows)]
    made[0].sampler.doomed = True
    for _ in engine.run():
        pass
    assert made[0].finish_reason == "error" and "injected" in made[0].error
    assert all(r.finish_reason in ("stop", "length") for r in made[1:])


@pytest.mark.parametrize("mode", ["window", "halve"])
def test_a_row_joining_just_after_a_lone_rows_refold_keeps_its_bytes(small, mode):
    """A lone halve row re-folds at W and leaves no stepper; the engine then knows no row is near
    a boundary. A row that joins at that moment, one byte short of its own boundary, must still
    have it checked (the reviewer's case: it ran past W)."""
    W, options = small.max_seq_len, GenerateOptions.of(max_new_tokens=40, context=mode, seed=5, temperature=0.8)
    prompt = "a" * (W - 2)  # bos and W - 2 bytes: position W - 1
    alone = Engine(small)
    row = alone.add(prompt, options)
    expected = _texts(alone, [row])
    engine = Engine(small)
    first = engine.add("x", GenerateOptions.of(max_new_tokens=2 * W, context="halve", seed=1))
    before = first.position
    while first.position >= before:  # until it has just re-folded
        before = first.position
        engine.step()
    row = engine.add(prompt, options)
    assert ["".join(p for r, p in engine.run() if r is row)] == expected


def test_a_logprobs_row_after_a_failed_step(small):
    engine = Engine(small)
    engine.add("x", GenerateOptions.of(max_new_tokens=200, context="unbounded"))
    for _ in range(3):
        engine.step()
    engine.abort(RuntimeError("the shared call failed"))
    row = engine.add("hello", GenerateOptions.of(max_new_tokens=5, logprobs=2))
    list(engine.run())
    assert row.finish_reason == "length" and len(row.take_logprobs()) == 5
