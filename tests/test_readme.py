"""The README's commands and its Python snippet run as written, with real files, in order, from a
copy of the layout the quickstart leaves (.venv, out/ with the exported and quantized 1m,
../shared beside the repository), and write nothing outside out/.

Only their length is cut (fewer stories, steps or repeats: LIGHTER), the hub download may fail
offline in one line, mixer-pack is not let download aarch64 wheels (the emulated Pi tests do),
and mixer-serve is started on a free port, asked for /health and its key, and stopped."""
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import ROOT, SHARED

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

# words of a README command -> what they become here, to keep the suite short
LIGHTER = [("-o out/m-int8.onnx --text $D/valid.txt", "-o out/m-int8.onnx --text $D/valid.txt --limit 20"),
           ("--context all", "--context all --limit 10"),
           ("--reference", "--repeats 1 --reference"),
           ("--steps 200", "--steps 2 --eval-every 1 --eval-stories 3"),
           ("--serve", "--serve --no-deps")]


def _commands() -> list[str]:
    block = re.search(r"## Commands.*?```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _snippet() -> str:
    return re.search(r"## Python\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


@pytest.fixture(scope="module")
def layout(bundled, tmp_path_factory):
    """tmp/repo (out/ with the quickstart's two models, micromixer_edge/ linked) and tmp/shared."""
    top = tmp_path_factory.mktemp("readme")
    repo = top / "repo"
    (repo / "out").mkdir(parents=True)
    shutil.copy2(bundled["float"], repo / "out" / "micromixer-1m.onnx")
    shutil.copy2(bundled["int8"], repo / "out" / "micromixer-1m-int8.onnx")
    (repo / "micromixer_edge").symlink_to(ROOT / "micromixer_edge")
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (top / "shared").symlink_to(SHARED)
    return repo


def test_the_readme_commands_run_as_written(layout):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # (the README's own first line activates the venv)
    prelude, ran, lightened = [], [], set()
    for line in _commands():
        if line.startswith(". ") or re.match(r"^[A-Z]+=", line):  # the venv, D=...: for every line after
            prelude.append(line)
            continue
        for old, new in LIGHTER:
            if old in line:
                line, _ = line.replace(old, new), lightened.add(old)
        line = "; ".join(prelude + [line])
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
            if "--regex" in line:  # structured output: the whole text matches
                assert re.fullmatch(re.search(r"--regex '([^']+)'", line).group(1), proc.stdout.rstrip("\n"))
        ran.append(line.split("; ")[-1].split()[0])
    assert ran.count("mixer-run") == 5 and ran[-1] == "mixer-serve"
    assert lightened == {old for old, _ in LIGHTER}  # (each cut still meets its command)
    assert sorted(p.name for p in layout.iterdir()) == [".venv", "micromixer_edge", "out"]  # nothing outside out/
    proc = subprocess.run([str(layout / ".venv" / "bin" / "python"), "-c", _snippet()], cwd=layout, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the Python snippet, as written, after the commands


def _serve(line: str, cwd, env) -> None:
    """`... ; mixer-serve ... --port 8080 ...` on a free port: it answers /health and the API with
    the key the line wrote, and stops on SIGTERM."""
    proc = subprocess.Popen(["bash", "-c", line.replace("--port 8080", "--port 0").replace("mixer-serve", "exec mixer-serve")],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
        key = (cwd / "out" / "key.txt").read_text().strip()
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
