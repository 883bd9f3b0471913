"""The sampler's properties (the fast tier: numpy alone): determinism, a row's bytes in any batch,
and the sampled distribution against its definition written plainly."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from micromixer_edge.format import EOS_ID
from micromixer_edge.runtime import sampling
from micromixer_edge.runtime.sampling import Sampler, SamplingParams, sample_rows

pytestmark = pytest.mark.fast

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), temperature=st.floats(0.1, 2.0), top_k=st.integers(0, 50),
       top_p=st.floats(0.05, 1.0), min_p=st.floats(0.0, 0.5))
def test_seeded_sampling_is_deterministic(seed, temperature, top_k, top_p, min_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    logits = np.random.default_rng(0).normal(scale=3, size=(20, 256)).astype(np.float32)
    draws = [[Sampler(params, seed).sample(row) for row in logits] for _ in range(2)]
    assert draws[0] == draws[1]
    assert not {0, 1} & set(draws[0])  # pad and bos are never sampled


row_params = st.builds(SamplingParams, temperature=st.sampled_from([0.0, 0.3, 0.8, 1.5]),
                       top_k=st.sampled_from([0, 1, 5, 40]), top_p=st.sampled_from([0.5, 0.9, 1.0]),
                       min_p=st.sampled_from([0.0, 0.05, 0.3]), repetition_penalty=st.sampled_from([1.0, 1.3]),
                       ignore_eos=st.booleans(), presence_penalty=st.sampled_from([0.0, 0.7, -1.0]),
                       frequency_penalty=st.sampled_from([0.0, 1.5]),
                       logit_bias=st.sampled_from([(), ((32, -100.0), (101, 5.0)), ((2, 30.0),)]))


@SETTINGS
@given(params=st.lists(row_params, min_size=1, max_size=12), seed=st.integers(0, 2**16), ties=st.booleans())
def test_a_row_samples_the_same_bytes_in_any_batch(params, seed, ties):
    """sample_rows over a batch == each row's Sampler alone, step after step (same generators'
    states), with mixed parameters per row, and with tied logits (integer-valued) too. Alone is
    the one-row path; a batch of up to PICK_ROWS rows draws row by row in Python floats, a larger
    one in numpy for all rows at once."""
    rng = np.random.default_rng(seed)
    batch = [Sampler(p, seed + i) for i, p in enumerate(params)]
    alone = [Sampler(p, seed + i) for i, p in enumerate(params)]
    for a, b in zip(batch, alone):
        recent = rng.integers(0, 256, 30).tolist()
        a.remember(recent)
        b.remember(recent)
    for _ in range(4):
        logits = rng.normal(scale=3, size=(len(params), 256)).astype(np.float32)
        logits = np.round(logits) if ties else logits
        tokens = sample_rows(batch, logits)
        assert tokens == [s.sample(row) for s, row in zip(alone, logits)]
        for token, a, b in zip(tokens, batch, alone):  # generated: counted for presence and frequency
            for s in (a, b):
                s.accepted(token)
                s.remember([token])
    assert [s.rng.getstate() for s in batch] == [s.rng.getstate() for s in alone]


@SETTINGS
@given(params=st.lists(row_params.filter(lambda p: p.temperature > 0), min_size=1, max_size=40),
       seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 3.0, 30.0]), ties=st.booleans())
def test_the_numpy_draw_is_the_python_draw(params, seed, scale, ties):
    """The two ways a batch finishes its draw (sampling._draw: numpy for all rows; _pick_each:
    Python floats row by row) give the same bytes from the same (R, V) block, and use their
    generators alike."""
    logits = np.random.default_rng(seed).normal(scale=scale, size=(len(params), 256))
    logits = np.round(logits) if ties else logits
    logits[:, :2] = -np.inf  # (banned, as sample_rows passes them)
    one, two = ([Sampler(p, seed + i) for i, p in enumerate(params)] for _ in range(2))
    assert sampling._draw(logits.copy(), one) == sampling._pick_each(logits.copy(), two)
    assert [s.rng.getstate() for s in one] == [s.rng.getstate() for s in two]


def _filtered(logits, p: SamplingParams, counts: dict) -> np.ndarray:
    """The documented distribution, written plainly: temperature, then min-p, top-k, top-p; pad
    and bos are never sampled, and eos is not when the row ignores it (README: --ignore-eos)."""
    x = logits.astype(np.float64)
    for byte, times in counts.items():  # OpenAI's: mu - c * frequency - (c > 0) * presence
        x[byte] -= times * p.frequency_penalty + p.presence_penalty
    for byte, bias in p.logit_bias:
        x[byte] += bias
    x = x / p.temperature
    x[[0, 1] + ([EOS_ID] if p.ignore_eos else [])] = -np.inf  # pad, bos never; eos not when ignored
    probs = np.exp(x - x.max())
    order = sorted(range(256), key=lambda i: (-probs[i], i))
    kept = [i for i in order if probs[i] > 0 and probs[i] >= p.min_p][:p.top_k or 256]
    mass, prefix = sum(probs[i] for i in kept), []
    for i in kept:
        prefix.append(i)
        if p.top_p < 1 and sum(probs[j] for j in prefix) >= p.top_p * mass:
            break
    out = np.zeros(256)
    out[prefix] = probs[prefix] / probs[prefix].sum()
    return out


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=1.3, top_k=0, top_p=0.7, min_p=0),
                                    SamplingParams(temperature=0.5, top_k=3, top_p=1.0, min_p=0.0, ignore_eos=True),
                                    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
                                    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                                   presence_penalty=1.0, frequency_penalty=0.5,
                                                   logit_bias=((9, -100.0), (40, 6.0)))])
@pytest.mark.parametrize("rows", [1, 20])
def test_sampled_bytes_follow_the_filtered_distribution(params, rows):
    """20,000 draws from one logit row, alone or as each row of a batch of 20 (numpy's draw):
    each byte's frequency within 5 standard errors of the distribution computed from the
    definition (and nothing outside it is ever drawn)."""
    logits = np.random.default_rng(3).normal(scale=2, size=256).astype(np.float32)
    logits[[7, 9]] = logits.max()  # a tie at the top
    counts = {7: 3, 40: 1, 120: 2}  # bytes generated so far (the penalties' c)
    want, n = _filtered(logits, params, counts if params.presence_penalty else {}), 20_000
    samplers = [Sampler(params, seed) for seed in range(rows)]
    for byte, times in counts.items():
        for sampler in samplers:
            sampler.accepted(byte, times)
    block = np.repeat(logits[None], rows, axis=0)
    drawn = [t for _ in range(n // rows) for t in sample_rows(samplers, block)]
    got = np.bincount(drawn, minlength=256) / n
    assert not got[want == 0].any()
    assert np.all(np.abs(got - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9)
