"""--from-hub: the real huggingface_hub code path, run offline against a cache filled locally."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import GOLDEN

pytest.importorskip("huggingface_hub")
REPO = "llaa33219/MicroMixer-1-100K-TinyStories"


def _fill_cache(cache, repo, src):
    """The hub cache layout: refs/main names a snapshot folder holding the file."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(src, root / "snapshots" / commit / "model.pt")


def _export(tmp_path, *args):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "micromixer_edge.export", *args, "--no-validate",
                           "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env)


def test_from_hub_loads_from_the_offline_cache(tmp_path):
    _fill_cache(tmp_path / "cache", REPO, GOLDEN / "100k_model.pt")
    proc = _export(tmp_path, "--size", "100k", "--from-hub")
    assert proc.returncode == 0, proc.stderr
    assert "100k" in proc.stdout and (tmp_path / "m.onnx").exists()


def test_from_hub_without_network_is_one_clear_line(tmp_path):
    (tmp_path / "cache").mkdir()
    proc = _export(tmp_path, "--from-hub", "someone/not-cached")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch someone/not-cached/model.pt")
    assert not (tmp_path / "m.onnx").exists()
