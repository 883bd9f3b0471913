"""The default int8 (and every invariant scheme) on the bundled 1m weights: a row's logits do not
depend on its batch neighbours or on how its sequence is cut into calls; it stays near-lossless
and small. The truth each test holds a scheme to: the same model run another way (alone, in one
call, byte by byte), and the float export."""
import math

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import DATA
from micromixer_edge import format as fmt
from micromixer_edge.quantize.report import compare_on_text, invariance
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.codec import read_stories
from micromixer_edge.runtime.generate import generate, generate_batch

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INVARIANT = ("float", "int8", "int8-block")  # dynamic is batch- and chunk-dependent by design
EXACT = 1e-4


@pytest.fixture(scope="module")
def models(bundled):
    return {kind: MixerModel(bundled[kind]) for kind in INVARIANT}


@pytest.mark.parametrize("kind", INVARIANT)
@SETTINGS
@given(ids=st.lists(st.integers(0, 255), min_size=1, max_size=80), cuts=st.lists(st.integers(1, 79), max_size=6))
def test_one_call_chunks_and_steps_agree(models, kind, ids, cuts):
    model, ids = models[kind], np.array(ids)
    whole, s_whole = model.prefill(ids)
    bounds = sorted({c for c in cuts if c < len(ids)}) + [len(ids)]
    state, parts, start = model.new_state(), [], 0
    for end in bounds:
        logits, state = model.prefill(ids[start:end], state)
        parts.append(logits[0])
        start = end
    np.testing.assert_allclose(np.concatenate(parts), whole[0], atol=EXACT, rtol=0)
    step_state, rows = model.new_state(), []
    for t in ids:
        logits, step_state = model.step([t], step_state)
        rows.append(logits[0])
    np.testing.assert_allclose(np.stack(rows), whole[0], atol=EXACT, rtol=0)
    np.testing.assert_allclose(state.sums, s_whole.sums, atol=EXACT, rtol=0)


@pytest.mark.parametrize("kind", INVARIANT)
@SETTINGS
@given(positions=st.lists(st.integers(0, 600), min_size=2, max_size=6), length=st.integers(1, 24),
       seed=st.integers(0, 2**16))
def test_a_batch_row_equals_the_row_alone(models, kind, positions, length, seed):
    """Rows of random bytes, at random positions, with random running sums."""
    model, rng = models[kind], np.random.default_rng(seed)
    ids = rng.integers(3, 256, (len(positions), length))
    state = model.new_state(len(positions))
    state.position[:] = positions
    state.sums[:] = rng.normal(scale=3, size=state.sums.shape).astype(np.float32)
    together, _ = model.prefill(ids, state)
    for i in range(len(positions)):
        alone, _ = model.prefill(ids[i:i + 1], state.rows([i]))
        np.testing.assert_allclose(together[i], alone[0], atol=EXACT, rtol=0)


PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named",
           "Tom had a big red", "The sun was", "Mom said,", "In the park there was a tall tree"]


@pytest.mark.parametrize("kind", INVARIANT)
def test_generate_batch_equals_generate(models, kind):
    options = GenerateOptions.of(max_new_tokens=150, temperature=0)
    batch = generate_batch(models[kind], PROMPTS, options)
    assert batch == [generate(models[kind], p, options) for p in PROMPTS]


def test_the_report_sees_what_dynamic_does(models, bundled):
    """The report's invariance line: zero for the invariant schemes, clearly not for dynamic."""
    for kind in INVARIANT:
        assert invariance(models[kind]) == (0.0, 0.0), kind
    batch, chunk = invariance(MixerModel(bundled["dynamic"]))
    assert batch > 0.01 and chunk > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "int8-block"])
def test_near_lossless_on_all_held_out_stories(models, kind):
    nf, nq, kl, hits, count = compare_on_text(models["float"], models[kind], read_stories(DATA / "valid.txt"))
    change = nq / nf - 1
    print(f"{kind}: bits/byte {nf / count / math.log(2):.4f} -> {nq / count / math.log(2):.4f} "
          f"({change:+.2%}), KL {kl / count:.5f}, top-1 {hits / count:.2%} over {count} positions")
    assert change <= 0.002 and kl / count <= 0.002 and hits / count >= 0.98


@pytest.mark.parametrize("kind", ["int8", "int8-block"])
def test_small_with_every_table_quantized(bundled, kind):
    assert bundled[kind].stat().st_size <= 0.30 * bundled["float"].stat().st_size
    q = onnx.load(str(bundled[kind]))
    floats = [t.name for t in q.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 4096]
    assert floats == []  # neither embedding table, nor any weight, is stored in float
    assert fmt.parse_metadata({p.key: p.value for p in q.metadata_props})["quantization"] == fmt.QUANT_SCHEMES[kind]
