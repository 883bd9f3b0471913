"""Properties of the runtime, for random inputs (hypothesis), and long-stream numerical stability."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ATOL, GOLDEN
from micromixer_edge.export.checkpoint import load_checkpoint
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.context import Context
from micromixer_edge.runtime.sampling import Sampler, SamplingParams

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
tokens = st.lists(st.integers(0, 255), min_size=1, max_size=60)


@pytest.fixture(scope="module")
def model(export_file):
    return MixerModel(export_file("100k_model"))


@SETTINGS
@given(ids=tokens, cuts=st.lists(st.integers(1, 59), max_size=5))
def test_chunks_one_call_and_steps_agree(model, ids, cuts):
    ids = np.array(ids)
    whole, s_whole = model.prefill(ids)
    bounds = sorted({c for c in cuts if c < len(ids)}) + [len(ids)]
    state, parts, start = model.new_state(), [], 0
    for end in bounds:
        logits, state = model.prefill(ids[start:end], state)
        parts.append(logits[0])
        start = end
    np.testing.assert_allclose(np.concatenate(parts), whole[0], atol=ATOL, rtol=1e-5)
    step_state, rows = model.new_state(), []
    for t in ids:
        logits, step_state = model.step([t], step_state)
        rows.append(logits[0])
    np.testing.assert_allclose(np.stack(rows), whole[0], atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(state.sums, s_whole.sums, atol=1e-4, rtol=1e-5)


@SETTINGS
@given(rows=st.lists(st.tuples(st.lists(st.integers(3, 255), min_size=12, max_size=12),
                               st.integers(0, 500)), min_size=2, max_size=4))
def test_batch_rows_are_independent(model, rows):
    """A row's logits do not depend on the other rows of the batch (nor on their positions)."""
    ids = np.array([r[0] for r in rows])
    state = model.new_state(len(rows))
    state.position[:] = [r[1] for r in rows]
    state.sums[:] = np.random.default_rng(len(rows)).normal(size=state.sums.shape).astype(np.float32)
    together, _ = model.prefill(ids, state)
    for i in range(len(rows)):
        alone, _ = model.prefill(ids[i:i + 1], state.rows([i]))
        np.testing.assert_allclose(together[i], alone[0], atol=ATOL, rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), temperature=st.floats(0.1, 2.0), top_k=st.integers(0, 50),
       top_p=st.floats(0.05, 1.0), min_p=st.floats(0.0, 0.5))
def test_seeded_sampling_is_deterministic(seed, temperature, top_k, top_p, min_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    logits = np.random.default_rng(0).normal(scale=3, size=(20, 256)).astype(np.float32)
    draws = [[Sampler(params, seed).sample(row) for row in logits] for _ in range(2)]
    assert draws[0] == draws[1]
    assert not {0, 1} & set(draws[0])  # pad and bos are never sampled


def test_long_stream_drift_against_float64(export_file):
    """100,000 tokens in unbounded mode: the float32 graph stays within 1e-3 (relative to the
    largest logit) of the same model computed in float64."""
    n = 100_000
    onnx_model = MixerModel(export_file("brief_1m_model"))
    ids = np.random.default_rng(0).integers(32, 127, n)
    ctx = Context(onnx_model, 1, "unbounded")
    for t in ids[:-5]:
        ctx.feed([t])
    late = np.stack([ctx.feed([t])[0] for t in ids[-5:]])
    m64 = load_checkpoint(GOLDEN / "brief_1m_model.pt").model.double()
    state = torch.zeros(3, 1, 224, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, 5000):
            logits, state = m64.step(torch.from_numpy(ids[start:start + 5000])[None],
                                     torch.tensor([start]), state)
    want = logits[0, -5:].numpy()
    drift = np.abs(late - want).max() / np.abs(want).max()
    print(f"drift after {n} tokens: {drift:.2e} relative, {np.abs(late - want).max():.2e} abs")
    assert drift < 1e-3
