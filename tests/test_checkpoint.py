"""Checkpoint loading: both formats, size inference, and one clear line for every bad file."""

import pytest

torch = pytest.importorskip("torch")  # the export extra; the fast tier runs without it

from conftest import GOLDEN
from micromixer_edge.errors import CheckpointError
from micromixer_edge.export.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def sd100k():
    return torch.load(GOLDEN / "100k_model.pt", weights_only=True)


def test_size_is_inferred_and_formats_agree():
    plain = load_checkpoint(GOLDEN / "100k_model.pt")
    trainer = load_checkpoint(GOLDEN / "100k_trainer_ckpt.pt", size="100k")
    assert plain.size == trainer.size == "100k"
    assert trainer.extras.get("epoch") == 0
    for (k, a), b in zip(plain.model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_save_then_load_round_trip(tmp_path):
    model = load_checkpoint(GOLDEN / "300k_model.pt").model
    save_checkpoint(model, tmp_path / "hf.pt")
    save_checkpoint(model, tmp_path / "trainer.pt", epoch=3)
    for name in ("hf.pt", "trainer.pt"):
        again = load_checkpoint(tmp_path / name)
        assert again.size == "300k"
        for a, b in zip(model.state_dict().values(), again.model.state_dict().values()):
            assert torch.equal(a, b)


def _edit(sd, drop=None, add=None, reshape=None):
    sd = dict(sd)
    if drop:
        del sd[drop]
    if add:
        sd[add] = torch.zeros(3)
    if reshape:
        sd[reshape] = torch.zeros(5, 5)
    return sd


@pytest.mark.parametrize("edit,message", [
    (dict(drop="mixer_layers.1.norm2.bias"), "missing key mixer_layers.1.norm2.bias (expected shape (84,)"),
    (dict(add="mixer_layers.3.norm1.weight"), "unexpected key mixer_layers.3.norm1.weight (shape (3,))"),
    (dict(reshape="mixer_layers.0.channel_mlp.fc1.weight"),
     "key mixer_layers.0.channel_mlp.fc1.weight: expected shape (128, 84) for 100k, found (5, 5)"),
])
def test_bad_keys_name_the_first_bad_key(tmp_path, sd100k, edit, message):
    path = tmp_path / "bad.pt"
    torch.save(_edit(sd100k, **edit), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_size_that_disagrees_with_the_file():
    with pytest.raises(CheckpointError, match="holds a 100k model, not 1m"):
        load_checkpoint(GOLDEN / "100k_model.pt", size="1m")


@pytest.mark.parametrize("content,message", [
    (b"", "not a PyTorch checkpoint"),
    (b"hello, not a checkpoint", "not a PyTorch checkpoint"),
])
def test_non_torch_files(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


class _Evil:
    """Unpickling this would create a file: the side effect a malicious checkpoint would have."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path, sd100k):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": dict(sd100k), "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
