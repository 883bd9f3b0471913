"""mixer-pack: the bundle's contents (the emulated install itself is in test_arm.py)."""
import tarfile

from click.testing import CliRunner

from micromixer_edge.pack.cli import pack_command


def test_tarball_bundle_without_dependency_wheels(export_file, tmp_path):
    model = export_file("brief_100k_model")
    out = tmp_path / "pi.tar.gz"
    result = CliRunner().invoke(pack_command, [str(model), "-o", str(out), "--no-deps"])
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("pi/requirements.txt").read().decode()
        install = tar.extractfile("pi/install.sh").read().decode()
    assert {"pi/install.sh", "pi/run.sh", "pi/README.md", f"pi/{model.name}"} <= names
    assert any(n.startswith("pi/wheels/micromixer_edge-") and n.endswith(".whl") for n in names)
    assert "onnxruntime!=1.21.0" in requirements and "torch" not in requirements
    assert f'mixer-run "{model.name}" --selftest' in install
    assert [p.name for p in tmp_path.iterdir()] == ["pi.tar.gz"]  # no temporary left


def test_refuses_existing_output_and_non_models(export_file, tmp_path):
    (tmp_path / "taken").mkdir()
    result = CliRunner().invoke(pack_command, [str(export_file("brief_100k_model")), "-o", str(tmp_path / "taken")])
    assert result.exit_code != 0 and "exists" in str(result.exception)
    (tmp_path / "x.onnx").write_bytes(b"junk")
    result = CliRunner().invoke(pack_command, [str(tmp_path / "x.onnx"), "-o", str(tmp_path / "b")])
    assert result.exit_code != 0 and "not a loadable ONNX model" in str(result.exception)
    assert not (tmp_path / "b").exists()
