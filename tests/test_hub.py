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


def test_from_hub_offline_fails_fast(tmp_path):
    """Without a network (this machine reaches package registries only) and without a cached copy,
    the one-line error comes within seconds, not after the hub library's retries (25 s before)."""
    import time
    (tmp_path / "cache").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "micromixer_edge.export", "--size", "300k", "--from-hub", "-o",
                           str(tmp_path / "m.onnx")], capture_output=True, text=True,
                          env={**env, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    took = time.perf_counter() - t0
    print(f"offline --from-hub: {took:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and took < 12
    assert "not cached, and the hub did not answer" in proc.stderr
