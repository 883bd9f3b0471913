"""The README's commands run as written, with real files, in order, from a copy of the layout the
quickstart leaves (out/ with the exported and quantized 1m, ../shared beside the repository).

Only their length is cut (the same commands, fewer stories, steps or repeats: LIGHTER), the hub
download may fail offline in one line, mixer-pack is not let download aarch64 wheels (the emulated
Pi tests do that), and mixer-serve is started on a free port, asked for /health and stopped."""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

# a README command's distinctive words -> what is added to it here, to keep the suite short
LIGHTER = [("mixer-quantize out/micromixer-1m.onnx -o out/m-int8.onnx", " --limit 20"),
           ("mixer-eval", " --limit 10"),
           ("mixer-bench", " --repeats 1"),
           ("mixer-train", " --steps 2 --eval-every 1 --eval-stories 3"),
           ("--serve", " --no-deps")]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Commands.*?```sh\n(.*?)```", text, re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def layout(bundled, tmp_path_factory):
    """tmp/repo (out/ with the quickstart's two models, micromixer_edge/ linked) and tmp/shared."""
    top = tmp_path_factory.mktemp("readme")
    repo = top / "repo"
    (repo / "out").mkdir(parents=True)
    shutil.copy2(bundled["float"], repo / "out" / "micromixer-1m.onnx")
    shutil.copy2(bundled["int8"], repo / "out" / "micromixer-1m-int8.onnx")
    (repo / "micromixer_edge").symlink_to(ROOT / "micromixer_edge")
    (top / "shared").symlink_to(SHARED)
    return repo


def test_the_readme_commands_run_as_written(layout):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]}
    env.pop("HF_HUB_OFFLINE", None)
    ran = []
    for line in _commands():
        if "=" in line.split()[0] and not line.startswith("mixer"):  # D=...: a variable for the rest
            name, value = line.split()[0].split("=", 1)
            env[name] = value
            continue
        line += "".join(more for words, more in LIGHTER if words in line)
        if "mixer-serve" in line:
            _serve(line, layout, env)
        else:
            proc = subprocess.run(["bash", "-c", line], cwd=layout, env=env, capture_output=True, text=True,
                                  timeout=300)
            if "--from-hub" in line and proc.returncode != 0:  # offline here: one line, at once
                assert proc.stderr.count("\n") == 1 and "not cached" in proc.stderr, proc.stderr
            else:
                assert proc.returncode == 0, (line, proc.stderr[-2000:])
            if "--load-state" in line:  # a resumed story shows where its new text starts
                assert proc.stdout.startswith(" Then"), proc.stdout[:80]
        ran.append(line.split()[0])
    assert ran.count("mixer-run") == 4 and "mixer-serve" in " ".join(_commands())


def _serve(line: str, cwd, env) -> None:
    """`... ; mixer-serve ... --port 8080 ...` on a free port: it answers /health and the API with
    the key the line wrote, and stops on SIGTERM."""
    before, _, serve = line.rpartition("; ")
    if before:
        subprocess.run(["bash", "-c", before], cwd=cwd, env=env, check=True, timeout=60)
    args = shlex.split(serve.replace("--port 8080", "--port 0"))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
        key = (cwd / "out" / "key.txt").read_text().strip()
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
