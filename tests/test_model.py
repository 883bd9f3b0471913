"""The PyTorch model against the original implementation's golden outputs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra; the fast tier runs without it

from conftest import ATOL, GOLDEN, SIZES, golden_reference
from micromixer_edge.export.checkpoint import load_checkpoint
from micromixer_edge.format import PARAM_COUNTS, SIZES as PRESETS
from micromixer_edge.export.model import MicroMixerV2


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts(size):
    model = MicroMixerV2(PRESETS[size])
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[size]


# both published formats: every size as a plain state_dict, and 100k as a training-script file
CHECKPOINTS = [(s, f"{s}_model.pt") for s in SIZES] + [("100k", "100k_trainer_ckpt.pt")]


@pytest.mark.parametrize("size,name", CHECKPOINTS)
def test_golden_parity(size, name):
    path = GOLDEN / name
    model = load_checkpoint(path).model
    ref = golden_reference(size)
    with torch.no_grad():
        for i in range(4):
            out = model(torch.from_numpy(ref[f"prompt{i}"])[None])[0].numpy()
            np.testing.assert_allclose(out, ref[f"logits{i}"], atol=ATOL, rtol=1e-5)
        # longer than max_seq_len: only the last W tokens, positions restarting at 0
        long_ids = ref["long_ids"]
        assert len(long_ids) > PRESETS[size].max_seq_len
        out = model(torch.from_numpy(long_ids)[None])[0].numpy()
        np.testing.assert_allclose(out, ref["long_logits"], atol=ATOL, rtol=1e-5)


def test_step_in_pieces_equals_one_call():
    """The stateful step is the same function whether fed at once, in chunks or token by token."""
    model = load_checkpoint(GOLDEN / "300k_model.pt").model
    ids = torch.from_numpy(golden_reference("300k")["prompt3"])[None]
    zero = torch.zeros(3, 1, model.config.hidden_dim)
    with torch.no_grad():
        whole, s_whole = model.step(ids, torch.tensor([0]), zero)
        parts, state, pos = [], zero, 0
        for n in (5, 1, 1, ids.shape[1] - 7):
            out, state = model.step(ids[:, pos:pos + n], torch.tensor([pos]), state)
            parts.append(out)
            pos += n
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(state, s_whole, atol=1e-4, rtol=1e-5)
