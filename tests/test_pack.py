"""mixer-pack: the bundle's contents (the emulated install itself is in test_arm.py)."""
import re
import tarfile
import tomllib
from pathlib import Path

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


def test_pi4_target_warns_about_the_dot_product_scheme(bundled, tmp_path):
    """An int8-block32 model packed for a Pi 4 gets a warning naming --target pi4; the Pi 4 scheme
    (int8, weight-only) packs silently."""
    runner = CliRunner()
    warned = runner.invoke(pack_command, [str(bundled["int8-block"]), "-o", str(tmp_path / "a"), "--no-deps",
                                          "--target", "pi4"])
    assert warned.exit_code == 0 and "--target pi4" in warned.stderr and "slow fallback" in warned.stderr
    quiet = runner.invoke(pack_command, [str(bundled["int8"]), "-o", str(tmp_path / "b"), "--no-deps",
                                         "--target", "pi4"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_serve_bundle_has_the_server_deps_and_a_unit(export_file, tmp_path):
    model = export_file("brief_100k_model")
    result = CliRunner().invoke(pack_command, [str(model), "-o", str(tmp_path / "b"), "--no-deps", "--serve"])
    assert result.exit_code == 0, result.output
    requirements = (tmp_path / "b" / "requirements.txt").read_text()
    serve = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    names = [re.split(r"[<>=!~; ]", dep)[0] for dep in serve]
    assert "uvicorn" in names and all(name in requirements for name in names)
    unit = (tmp_path / "b" / "micromixer-serve.service").read_text()
    assert f'mixer-serve "@DIR@/{model.name}"' in unit and "WantedBy=multi-user.target" in unit
    assert "--service" in (tmp_path / "b" / "install.sh").read_text()


def test_pi32_bundle_is_the_runtime_alone_over_apts_numpy(bundled, tmp_path):
    """--target pi32 (32-bit Pi OS): the runtime's wheel and no other (numpy and click come from
    apt), an install.sh that takes that route on a 32-bit userland, and a note when the model is
    not the one that runs fastest on numpy; --serve is refused in one line."""
    runner = CliRunner()
    result = runner.invoke(pack_command, [str(bundled["portable"]), "-o", str(tmp_path / "p"), "--target", "pi32"])
    assert result.exit_code == 0 and "note" not in result.stderr, result.output
    assert [w.name.split("-")[0] for w in (tmp_path / "p" / "wheels").iterdir()] == ["micromixer_edge"]
    assert "apt install python3-numpy python3-click" in (tmp_path / "p" / "requirements.txt").read_text()
    install = (tmp_path / "p" / "install.sh").read_text()
    assert "--system-site-packages" in install and "calcsize('P')" in install
    noted = runner.invoke(pack_command, [str(bundled["int8"]), "-o", str(tmp_path / "q"), "--target", "pi32"])
    assert noted.exit_code == 0 and "--target pi32" in noted.stderr and "slower" in noted.stderr
    refused = runner.invoke(pack_command, [str(bundled["portable"]), "-o", str(tmp_path / "r"), "--target", "pi32",
                                           "--serve"])
    assert refused.exit_code != 0 and "32-bit" in str(refused.exception) and not (tmp_path / "r").exists()
