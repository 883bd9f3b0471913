"""mixer-train: seeded, saves the published format, resumes exactly."""
import pytest
import numpy as np
from click.testing import CliRunner

torch = pytest.importorskip("torch")  # the export extra; the fast tier runs without it

from conftest import DATA
from micromixer_edge.export.checkpoint import load_checkpoint
from micromixer_edge.export.cli import train_command
from micromixer_edge.export.train import TrainConfig, sample_batch, train
from micromixer_edge.codec import encode_story as encode


def _train(tmp_path, name, steps, resume=None, stop_after=None):
    cfg = TrainConfig(size="100k", steps=steps, batch_size=4, seq_len=32, eval_every=3, eval_stories=8,
                      warmup=2, threads=1, dropout=0.1)
    return train(cfg, DATA / "train.txt", DATA / "valid.txt", tmp_path / name, resume, stop_after)


def test_seeded_and_resumable(tmp_path):
    curve = _train(tmp_path, "a.pt", 6)
    assert [s for s, _ in curve] == [3, 6] and all(0 < b < 9 for _, b in curve)
    _train(tmp_path, "b.pt", 6)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a.size == "100k" and a.extras["step"] == 6
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)  # same seed, same weights
    # stop after 3 steps, then resume to 6: the same weights as 6 straight steps
    _train(tmp_path, "c.pt", 6, stop_after=3)
    assert load_checkpoint(tmp_path / "c.pt").extras["step"] == 3
    _train(tmp_path, "c.pt", 6, resume=tmp_path / "c.pt")
    c = load_checkpoint(tmp_path / "c.pt")
    assert c.extras["step"] == 6 and [s for s, _ in c.extras["curve"]] == [3, 6]
    for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()):
        assert torch.equal(x, y)


def test_batches_are_bos_story_eos_padded():
    seqs = [encode(b"Hi there."), encode(b"x" * 100)]
    rows = sample_batch(np.random.default_rng(0), seqs, 8, 16).numpy()
    assert rows.shape == (8, 17)
    for row in rows:
        if row[0] == 1 and row[10] == 2:  # the short story: bos, bytes, eos, then padding
            assert bytes(row[1:10].tolist()) == b"Hi there." and not row[11:].any()
        else:  # a 17-token window cut from the long one
            assert set(row.tolist()) <= {1, 2, ord("x")}


def test_cli_trains_and_reports(tmp_path):
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(train_command, [
        "--size", "100k", "--train", str(DATA / "train.txt"), "--valid", str(DATA / "valid.txt"),
        "-o", str(out), "--steps", "4", "--batch-size", "2", "--seq-len", "16", "--eval-every", "2",
        "--eval-stories", "4", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "step 4: valid" in result.output and load_checkpoint(out).size == "100k"
