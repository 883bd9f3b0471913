"""Long-stream numerical stability against float64. (The sampler's properties: test_sampling.py;
chunking and batch invariance, float and quantized: test_faithful_int8.py.)"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra; the fast tier runs without it

from conftest import GOLDEN
from micromixer_edge.export.checkpoint import load_checkpoint
from micromixer_edge.runtime.model import MixerModel


def test_long_stream_drift_against_float64(export_file):
    """100,000 tokens in unbounded mode: the float32 graph stays within 1e-3 (relative to the
    largest logit) of the same model computed in float64."""
    n = 100_000
    onnx_model = MixerModel(export_file("brief_1m_model"))
    ids = np.random.default_rng(0).integers(32, 127, n)
    stepper = onnx_model.stepper(1)  # unbounded: one step a token, never a reset
    for t in ids[:-5]:
        stepper.step_one(int(t))
    late = np.stack([stepper.step_one(int(t)).copy() for t in ids[-5:]])
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
