"""The sampler's properties (the fast tier: numpy alone): determinism, a row's bytes in any batch,
and the sampled distribution against its definition written plainly."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from micromixer_edge.format import EOS_ID
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
    states), with mixed parameters per row, and with tied logits (integer-valued) too."""
    rng = np.random.default_rng(seed)
    seen = {"batch": [], "alone": []}  # every row's candidates and their log-probabilities, bit for bit
    def recorded(sampler, log):
        pick = sampler.pick
        sampler.pick = lambda ids, logp: log.append((ids, logp)) or pick(ids, logp)
        return sampler
    batch = [recorded(Sampler(p, seed + i), seen["batch"]) for i, p in enumerate(params)]
    alone = [recorded(Sampler(p, seed + i), seen["alone"]) for i, p in enumerate(params)]
    recents = [rng.integers(0, 256, 30).tolist() for _ in params]
    for _ in range(4):
        logits = rng.normal(scale=3, size=(len(params), 256)).astype(np.float32)
        logits = np.round(logits) if ties else logits
        tokens = sample_rows(batch, logits, recents)
        assert tokens == [s.sample(row, r) for s, row, r in zip(alone, logits, recents)]
        for token, a, b in zip(tokens, batch, alone):  # generated: counted for presence and frequency
            a.accepted(token)
            b.accepted(token)
    assert seen["batch"] == seen["alone"]


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
def test_sampled_bytes_follow_the_filtered_distribution(params):
    """20,000 draws from one logit row: each byte's frequency within 5 standard errors of the
    distribution computed from the definition (and nothing outside it is ever drawn)."""
    logits = np.random.default_rng(3).normal(scale=2, size=256).astype(np.float32)
    logits[[7, 9]] = logits.max()  # a tie at the top
    counts = {7: 3, 40: 1, 120: 2}  # bytes generated so far (the penalties' c)
    want, n = _filtered(logits, params, counts if params.presence_penalty else {}), 20_000
    sampler = Sampler(params, 0)
    for byte, times in counts.items():
        for _ in range(times):
            sampler.accepted(byte)
    got = np.bincount([sampler.sample(logits) for _ in range(n)], minlength=256) / n
    assert not got[want == 0].any()
    assert np.all(np.abs(got - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9)
