"""The weights bundled with the package: offline `mixer-export --size 1m` writes a model that
writes English; sizes without bundled weights say how to get some."""

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")  # the export extra; the fast tier runs without it


from conftest import DATA
from micromixer_edge.export.cli import export_command
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.codec import read_stories
from micromixer_edge.runtime.evaluate import bits_per_byte
from micromixer_edge.runtime.generate import generate


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "m.onnx"
    result = CliRunner().invoke(export_command, ["--size", "1m", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "micromixer_edge/weights/1m.pt" in result.output
    return out


def test_default_model_writes_english(default_export):
    text = generate(MixerModel(default_export), "Once upon a time", GenerateOptions.of(max_new_tokens=60, temperature=0))
    words = text.split()
    assert {"there", "was", "a", "little"} <= set(words), text


def test_default_model_bits_per_byte(default_export):
    """Held-out stories: the trained weights are far below the 8 bits/byte of a uniform guess."""
    stories = read_stories(DATA / "valid.txt")[:200]
    assert bits_per_byte(MixerModel(default_export), stories, "halve").bits_per_byte < 2.7


def test_card_matches_the_weights():
    from micromixer_edge.export.weights import bundled_path
    from micromixer_edge.export.checkpoint import file_sha256
    card = (bundled_path("1m").parent / "MODEL_CARD.md").read_text()
    assert file_sha256(bundled_path("1m")) in card


def test_sizes_without_bundled_weights_say_what_to_do(tmp_path):
    result = CliRunner().invoke(export_command, ["--size", "300k", "-o", str(tmp_path / "m.onnx")],
                                standalone_mode=False)
    message = str(result.exception)
    assert "no bundled weights for 300k" in message
    assert "--checkpoint" in message and "--from-hub llaa33219/MicroMixer-1-300K-TinyStories" in message
    assert not (tmp_path / "m.onnx").exists()
