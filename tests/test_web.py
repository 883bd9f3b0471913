"""mixer-pack --target web: the folder, its runner under Node's test runner (onnxruntime-node)
against Python's truth, and the page in headless Chromium against mixer-run's bytes."""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from micromixer_edge.errors import BadRequest, MixerError
from micromixer_edge.runtime.context import MODES, sequence_logits
from micromixer_edge.runtime.engine import Engine, GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.sampling import Sampler, SamplingParams, banned_ids, seed_value
from micromixer_edge.runtime.textstream import TextStream
from micromixer_edge.codec import encode_prompt

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
SOURCE = ROOT / "micromixer_edge" / "pack" / "web"
PROMPTS = ["Once upon a time", "", "The little dog", "Lily and Tom went to the park. They saw",
           "Ünïcödé 🐶 story:", "\n", 'Tom said, "', "One day " * 40]  # (the last one is past W = 256)
TIE = float(os.environ.get("MIXER_TIE", 1e-3))  # a greedy row may part from Python's where its two best logits are closer than this


def _node(*args, cwd=WEB, env=None, timeout=300):
    return subprocess.run(["node", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def node_ready():
    if not (WEB / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("web/node_modules is missing: run bash scripts/setup.sh (it runs npm ci in web/)")


@pytest.fixture(scope="module")
def packed(bundled, tmp_path_factory):
    """The default int8 packed for the web (its float and portable: the same folder, model swapped)."""
    from micromixer_edge.pack.web import make_web
    d = tmp_path_factory.mktemp("web")
    out = {"int8": make_web(bundled["int8"], d / "int8")}
    for kind in ("float", "portable"):
        out[kind] = shutil.copytree(out["int8"], d / kind)
        shutil.copy2(bundled[kind], out[kind] / "model.onnx")
    return out


# --- the folder ---------------------------------------------------------------------------------
def test_fields_module_is_generated_from_python():
    from micromixer_edge.pack.web import fields_module
    assert (SOURCE / "fields.mjs").read_text() == fields_module(), "run: python -m micromixer_edge.pack.web"


def test_mode_formulas_are_the_modes():
    from micromixer_edge.pack.web import MODE_FORMULAS
    def at(f, W):
        return math.inf if f is None else W * f[0] // f[1] + f[2]
    for W in range(2, 3000):
        for name, mode in MODES.items():
            assert (at(MODE_FORMULAS[name]["boundary"], W), at(MODE_FORMULAS[name]["keep"], W)) == (mode.boundary(W), mode.keep(W))


def test_ort_versions_agree():
    from micromixer_edge.pack.web import ORT_WEB_VERSION
    assert json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-node"] == ORT_WEB_VERSION
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-node"]["version"] == ORT_WEB_VERSION


def test_packed_folder(packed, bundled):
    d = packed["int8"]
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted([".npmrc", "fields.mjs", "index.html", "micromixer.mjs", "model.onnx", "ort-wasm-simd-threaded.mjs",
                            "ort-wasm-simd-threaded.wasm.gz", "ort.wasm.min.mjs", "package.json", "run.mjs", "serve.py",
                            "worker.mjs"])
    assert sum(p.stat().st_size for p in d.iterdir()) <= 16 * 2**20
    assert gzip.decompress((d / "ort-wasm-simd-threaded.wasm.gz").read_bytes())[:4] == b"\0asm"
    assert (d / "model.onnx").read_bytes() == bundled["int8"].read_bytes()


def _int8_activations(src: Path, dst: Path) -> Path:
    """The default int8 with its activations' zero point made int8: QuantizeLinear then writes int8
    codes into MatMulIntegerToFloat (onnxruntime-web's slow kernel)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(src))
    for i, t in enumerate(m.graph.initializer):
        if t.name == "rowq_zp127":
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(127, np.int8), t.name))
    onnx.save(m, str(dst))
    return dst


def test_int8_activations_are_refused(bundled, tmp_path):
    import onnx
    from micromixer_edge.pack.web import int8_activations, make_web
    for kind in ("int8", "float", "portable", "dynamic"):
        assert int8_activations(onnx.load(str(bundled[kind]))) == [], kind
    slow = _int8_activations(bundled["int8"], tmp_path / "slow.onnx")
    assert len(int8_activations(onnx.load(str(slow)))) == 4  # (the symmetric ones; Gelu outputs keep zero point 0)
    with pytest.raises(MixerError, match="int8 activations into an integer MatMul"):
        make_web(slow, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_int8_block_is_packed_with_a_note(bundled, tmp_path):
    proc = subprocess.run([str(Path(sys.executable).parent / "mixer-pack"), str(bundled["int8-block"]), "--target", "web",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.startswith("note: int8-block (MatMulNBits) runs ~5x slower"), proc.stderr
    assert (tmp_path / "out" / "model.onnx").read_bytes() == bundled["int8-block"].read_bytes()


def test_without_npm_or_cache_one_line(bundled, tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "MIXER_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([str(Path(sys.executable).parent / "mixer-pack"), str(bundled["int8"]), "--target", "web",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "install npm" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# --- Python's truth for Node's test runner ------------------------------------------------------
def _sampler_cases(rng: random.Random) -> list[dict]:
    cases = []
    for i in range(300):
        o = {"temperature": rng.choice([0, 0, 1e-3, 0.5, 0.8, 1.0, 1.5, 2.0]), "top_k": rng.choice([0, 1, 5, 40, 256]),
             "top_p": rng.choice([1, 0.95, 0.5, 0.1]), "min_p": rng.choice([0, 0.05, 0.3, 1]),
             "repetition_penalty": rng.choice([1, 1, 1.3, 0.7, 10]), "repeat_last_n": rng.choice([0, 4, 64]),
             "presence_penalty": rng.choice([0, 0, 0.5, -1.5]), "frequency_penalty": rng.choice([0, 0, 0.3, -2]),
             "ignore_eos": rng.random() < 0.2,
             "logit_bias": {str(rng.randrange(256)): rng.choice([-100, -2.5, 3, 100]) for _ in range(rng.choice([0, 0, 2]))}}
        seed = rng.choice([0, 1, 2**32, 2**64 - 1, -7, rng.getrandbits(63)])
        params = SamplingParams(**{k: v for k, v in o.items() if k != "logit_bias"}, logit_bias=tuple((int(k), float(b)) for k, b in o["logit_bias"].items()))
        s = Sampler(params, seed)
        recent, generated = [rng.randrange(3, 256) for _ in range(rng.randrange(0, 80))], [rng.randrange(3, 256) for _ in range(rng.randrange(0, 10))]
        s.remember(recent)
        for t in generated:
            s.accepted(t)
        steps = []
        for _ in range(4):
            scale = rng.choice([0.1, 3, 30])
            logits = (np.random.default_rng(rng.getrandbits(32)).standard_normal(256) * scale).astype(np.float32)
            if rng.random() < 0.3:  # ties
                logits[rng.sample(range(256), 5)] = logits.max()
            token = s.sample(logits)
            s.accepted(token)
            s.remember_one(token)
            steps.append({"logits": [float(x) for x in logits], "token": token})
        cases.append({"options": o, "seed": str(seed), "recent": recent, "generated": generated, "steps": steps})
    return cases


def _text_cases(rng: random.Random) -> list[dict]:
    pieces = ["a", "é", "🐶", "\n", "stop", "END", "st"]
    cases = []
    for _ in range(300):
        data = bytearray()
        for _ in range(rng.randrange(0, 12)):
            data += rng.choice(pieces).encode() if rng.random() < 0.7 else bytes([rng.randrange(256)])
        stops = rng.choice([[], ["stop"], ["END", "🐶"], ["é\n"], ["a" * 3, "st"]])
        stream = TextStream(tuple(stops))
        text = "".join(stream.push(bytes([b])) for b in data) + stream.finish()
        cases.append({"bytes": list(data), "stops": stops, "text": text, "stopped": stream.stopped})
    return cases


OPTION_VALUES = [None, True, False, "1", [], {}, -3, -1, 0, 0.005, 0.5, 1, 2, 2.5, 10, 10.5, 100, 256, 257, 4096, 4097, 8192,
                 8193, -2.5, 1e308, "halve", "window", "nope", ["a"], [""], "", ["a"] * 16, ["a"] * 17, {"10": 5},
                 {"256": 1}, {"10": 101}, {"x": 1}, {"10": "1"}, 2**63 - 2**10, 2**63, -2**63]


def _server_says(name: str, value) -> str | None:
    """The server's 400 message for {name: value} (its own parser), in the runner's words: the
    runtime's option names, no server flags."""
    from micromixer_edge.serve.fields import parse_completion
    from micromixer_edge.serve.settings import Settings
    from micromixer_edge.pack.web import _flag_free
    field = {"repetition_penalty": "repeat_penalty"}.get(name, name)
    body = {"prompt": value} if name == "prompt" else {"prompt": "x", field: value}
    if name == "repeat_last_n":  # (no such server field: its bound, as the server would word it)
        bound = SamplingParams.bound(name)
        return None if value is None or bound.holds(value, served=True) else f"{name} must be {bound.text(served=True)}"
    try:
        parse_completion(json.dumps(body).encode(), Settings(model=""))
    except BadRequest as e:
        return _flag_free(str(e)).replace(field, name, 1)
    return None


def _option_cases() -> list[dict]:
    from micromixer_edge.pack.web import option_spec
    spec, _ = option_spec()
    cases = []
    for name in spec:
        if name == "prompt":
            continue
        for v in OPTION_VALUES:
            if spec[name]["kind"] in ("integer", "seed") and isinstance(v, float) and v.is_integer():
                continue  # (JSON's 1.0 is 1 in JavaScript: one number type)
            big = name == "seed" and type(v) is int and abs(v) > 2**53  # (a BigInt in JavaScript)
            cases.append({"options": {name: {"bigint": str(v)} if big else v},
                          "error": _server_says(name, v)})
    cases.append({"options": {"prompt": 5}, "error": "prompt must be a string"})
    cases.append({"options": {"tempreature": 1}, "error": "unknown option tempreature; the options are "
                  + ", ".join(spec)})
    for prompt in ("a\ud800b", "🐶x\udc00", "\ud83d", "🐶 ok"):
        cases.append({"options": {"prompt": prompt}, "error": _server_says("prompt", prompt)})
    for stop in (["ok", "\ud800"], "x\udc00", ["🐶"]):
        cases.append({"options": {"stop": stop}, "error": _server_says("stop", stop)})
    return cases


def _margins(model, prompt: str, tokens: list[int], options: GenerateOptions) -> list[float]:
    """Per generated byte, Python's gap between its two most likely allowed bytes (float32 logits)."""
    logits = sequence_logits(model, encode_prompt(prompt) + tokens, options.context)[len(encode_prompt(prompt)) - 1:]
    logits[:, list(banned_ids(options.sampling))] = -np.inf
    top = np.sort(logits, axis=1)[:, -2:]
    return [float(a) for a in top[:, 1] - top[:, 0]]


def _generate_cases(bundled) -> list[dict]:
    cases = []
    sampled = [dict(prompt=PROMPTS[0], temperature=0.8, seed=1),
               dict(prompt=PROMPTS[3], temperature=1.2, top_k=0, top_p=0.9, min_p=0, seed=2**63 - 1),
               dict(prompt=PROMPTS[2], temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3,
                    logit_bias={"101": -3, "32": 1.5, "065": 2, "65": -1}, seed=7),
               dict(prompt=PROMPTS[4], temperature=0.8, seed=3, stop=["Lily", "\n", "🐶"], context="window"),
               dict(prompt=PROMPTS[-1], temperature=0.8, seed=5, context="window", repetition_penalty=1.2, repeat_last_n=0),
               dict(prompt=PROMPTS[-1], temperature=0.9, seed=4, context="unbounded", ignore_eos=True)]
    for kind in ("float", "portable", "int8"):
        model = MixerModel(bundled[kind])
        runs = [dict(prompt=p, max_tokens=300, temperature=0) for p in PROMPTS]
        runs += [dict(max_tokens=300, **s) for s in sampled]
        for o in runs:
            opts = _options({"options": o})
            engine = Engine(model)
            row = engine.add(o["prompt"], opts)
            text = "".join(piece for _, piece in engine.run())
            case = {"model": kind, "options": {**o, **({"seed": str(o["seed"])} if "seed" in o else {})}, "text": text,
                    "finish_reason": row.finish_reason, "tokens": row.stats.ids}
            if o["temperature"] == 0:
                case["margins"] = _margins(model, o["prompt"], row.stats.ids, opts)
            cases.append(case)
    return cases


@pytest.fixture(scope="module")
def cases(bundled, tmp_path_factory):
    from micromixer_edge.pack.web import option_spec
    rng = random.Random(20261206)
    twister = []
    for s in (0, 1, 42, 2**32 - 1, 2**32, 2**63 + 5, 2**64 - 1, 2**64, -1, 123456789012345678901234567890):
        r = random.Random(seed_value(s))
        twister.append({"seed": str(s), "values": [r.random() for _ in range(700)]})
    out = {"twister": twister, "sampler": _sampler_cases(rng), "text": _text_cases(rng), "options": _option_cases(),
           "defaults": {k: v for k, v in option_spec()[1].items()}, "tie": TIE,
           "models": {k: str(bundled[k]) for k in ("float", "portable", "int8")},
           "max_seq_len": MixerModel(bundled["int8"]).max_seq_len, "generate": _generate_cases(bundled)}
    path = tmp_path_factory.mktemp("web-cases") / "cases.json"
    path.write_text(json.dumps(out))
    return out, path


def test_node_runner_matches_python(node_ready, cases):
    proc = _node("--test", "--test-reporter=spec", "test/", env={"MIXER_WEB_CASES": str(cases[1])})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    ties = [line for line in proc.stdout.splitlines() if "near-ties:" in line]
    assert ties, proc.stdout[-3000:]
    if not ties[0].strip().endswith(": 0 of " + str(len(cases[0]["generate"])) + " generations"):
        warnings.warn(f"Node (onnxruntime-node): {ties[0].strip()}")


# --- run.mjs: the runner in Node as a board would run it ----------------------------------------
def _mixer_run(model, *args, stdin: str = "") -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "mixer-run"), str(model), *args], capture_output=True,
                          text=True, timeout=120, input=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("args", [["-p", "Once upon a time", "-n", "300", "--temperature", "0"],
                                  ["-p", "The cat", "-n", "200", "-t", "0.8", "--top-k", "20", "--seed", "5",
                                   "--stop", "dog", "--logit-bias", "101:-2"],
                                  ["-p", "-", "-n", "100", "--seed", "-7", "--presence-penalty", "-0.5"],
                                  ["-p", "Lily", "-n", "100", "--seed", "18446744073709551615", "--context", "window"]])
def test_run_mjs_prints_mixer_runs_text(node_ready, packed, bundled, args):
    stdin = "Once upon a time\n\n"  # (-p -: the trailing newlines dropped, as mixer-run does)
    proc = subprocess.run(["node", str(packed["int8"] / "run.mjs"), *args], cwd=WEB, input=stdin, capture_output=True,
                          text=True, timeout=120)  # (onnxruntime-node from web/, where node runs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _mixer_run(bundled["int8"], *args, stdin=stdin)


@pytest.mark.parametrize("args, message", [
    (["-p", "x", "--temperature", "3"], "error: --temperature must be a number from 0 to 2"),
    (["-p", "x", "-n", "5000"], "error: --max-new-tokens must be an integer from 0 to 4096"),
    (["-p", "x", "--temperature", ""], "error: --temperature must be a number, not \"\""),
    (["-p", "x", "--bogus"], "error: unknown option --bogus (node run.mjs --help lists the options)"),
    (["-p", "x", "--top-k", "1e1"], 'error: --top-k must be an integer, not "1e1"'),
    (["-p", ""], "error: the prompt is empty"),
    (["missing.onnx", "-p", "x"], "error: missing.onnx: no such file"),
    (["-p", "x", "--logit-bias", "10"], "error: --logit-bias takes BYTE:BIAS"),
    (["-p", "x", "-n", "many"], "error: --max-new-tokens must be an integer"),
])
def test_run_mjs_bad_input_one_line(node_ready, packed, args, message):
    proc = _node(str(packed["int8"] / "run.mjs"), *args)
    assert proc.returncode == 1 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def test_run_mjs_without_a_seed_on_nodes_without_global_crypto(node_ready, packed):
    """Node 18 (Pi OS bookworm's) has no global crypto: the seed comes from node:crypto."""
    proc = _node("--no-experimental-global-webcrypto", str(packed["int8"] / "run.mjs"), "-p", "Once", "-n", "20")
    assert proc.returncode == 0 and len(proc.stdout.encode()) >= 2, proc.stderr


def test_run_mjs_without_onnxruntime_node_says_what_to_do(packed, tmp_path):
    proc = _node(str(packed["int8"] / "run.mjs"), "-p", "x", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "onnxruntime-node is not installed: run `npm install` in" in proc.stderr


# --- the page in headless Chromium ----------------------------------------------------------------
class Page:
    """A packed folder served by its own serve.py (ephemeral port), loaded in headless Chromium."""

    def __init__(self, browser, folder: Path, query: str = "", isolate: bool = False):
        self.proc = subprocess.Popen([sys.executable, str(folder / "serve.py"), "--port", "0",
                                      *([] if isolate else ["--no-isolation"])], stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().split()[-1]
        self.browser = browser
        browser.goto(self.url + query)

    def ready(self):
        return self.browser.eval("micromixer.ready.then(r => r.threads, e => 'error: ' + e.message)")

    def close(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from browser import Browser
    b = Browser(tmp_path_factory.mktemp("chromium"))
    b.watch_network()
    yield b
    b.close()


RUN_CASES = """(async (cases) => {
  const out = [];
  for (const c of cases) {
    const pieces = [], o = {...c.options, seed: c.options.seed === undefined ? null : BigInt(c.options.seed)};
    const r = await micromixer.generate(o, (p) => pieces.push(p));
    out.push({text: r.text, finish_reason: r.finish_reason, pieces: pieces.length, joined: pieces.join('') === r.text,
              bytes_per_second: r.bytes_per_second});
  }
  return out;
})"""


def _tokens_of(text: str) -> list[int]:
    return list(text.encode("utf-8", "surrogatepass"))


def _options(c: dict) -> GenerateOptions:
    o = c["options"]
    bias = tuple(sorted((int(k), float(b)) for k, b in o.get("logit_bias", {}).items()))  # (the server's order)
    return GenerateOptions.of(max_new_tokens=o["max_tokens"], logit_bias=bias,
                              **{k: (int(v) if k == "seed" else v) for k, v in o.items() if k not in ("prompt", "max_tokens", "logit_bias")})


def _parting(model, c: dict, at: int, theirs: int) -> float:
    """How close Python's choice at byte `at` was (a row that parts there): greedy, its logit's
    lead over the other runner's byte; sampled, the draw's distance to the nearest boundary of the
    running sum it falls in, as a share of the sum. Small: a near-tie, which rounding decides."""
    engine = Engine(model)
    row = engine.add(c["options"]["prompt"], _options(c))
    for _ in range(at):  # (Python's own bytes: the same as the other runner's up to `at`)
        engine.step()
    s = row.sampler
    x = row.logits.astype(np.float64)
    x[list(s.banned)] = -np.inf
    if s.adjusts:
        from micromixer_edge.runtime.sampling import _adjust
        _adjust(x[None], [s])
    if s.temperature == 0:
        return float(x[c["tokens"][at] if at < len(c["tokens"]) else 2] - x[theirs])
    d = (x - x.max()) / s.temperature
    ids = np.flatnonzero(d >= s.log_min_p).tolist()
    order = sorted(range(len(ids)), key=lambda i: d[ids[i]], reverse=True)[:s.top_k]
    cdf = np.cumsum([math.exp(d[ids[i]]) for i in order])
    target = copy.deepcopy(s.rng).random() * cdf[-1 if s.params.top_p >= 1 else min(len(cdf) - 1, int(np.searchsorted(cdf, s.params.top_p * cdf[-1])))]
    return float(np.min(np.abs(cdf - target)) / cdf[-1])


# where the page's WebAssembly may part from Python's x86 kernels: a float row at a logit tie
# within float rounding; an int8 row also where a value falls on a rounding edge of its
# row-quantized code (its logits then move by ~1e-2, as on the Pi)
PARTING = {"float": 1e-3, "portable": 1e-3, "int8": 0.05}


def test_page_gives_mixer_runs_bytes(browser, packed, cases):
    """Every generation case of the Node test, in the page (WebAssembly): greedy and seeded, on
    float, portable and int8; a row may part from Python's only at a near-tie (counted, reported)."""
    parted = []
    for kind in ("float", "portable", "int8"):
        page = Page(browser, packed[kind])
        try:
            assert page.ready() == 1
            mine = [c for c in cases[0]["generate"] if c["model"] == kind]
            got = browser.eval(f"{RUN_CASES}({json.dumps(mine)})")
        finally:
            page.close()
        model = MixerModel(packed[kind] / "model.onnx")
        for c, r in zip(mine, got):
            assert r["joined"] and (r["pieces"] > 1 or len(r["text"]) < 200), r
            if (r["text"], r["finish_reason"]) == (c["text"], c["finish_reason"]):
                continue
            theirs, at = _tokens_of(r["text"]), 0
            while at < min(len(theirs), len(c["tokens"])) and theirs[at] == c["tokens"][at]:
                at += 1
            margin = _parting(model, c, at, theirs[at] if at < len(theirs) else 2)
            parted.append((kind, c["options"]["prompt"][:16], c["options"]["temperature"], at, round(margin, 5)))
            assert margin < PARTING[kind], parted[-1]
    print(f"page vs Python: {len(parted)} of {len(cases[0]['generate'])} generations part at a near-tie: {parted}")
    if parted:
        warnings.warn(f"Chromium (onnxruntime-web): {len(parted)} of {len(cases[0]['generate'])} generations part "
                      f"from Python's at a near-tie: {parted}")


def test_page_streams_stops_and_stays_on_its_host(browser, packed, tmp_path):
    browser.events.clear()
    page = Page(browser, packed["int8"], "?prompt=The%20dog")
    try:
        assert page.ready() == 1
        browser.eval("document.getElementById('go').click()")
        browser.wait_for("document.getElementById('out').dataset.done === '1'")
        status = browser.eval("document.getElementById('status').textContent")
        assert status.startswith("done (") and "bytes/s" in status, status
        assert browser.eval("document.getElementById('out').textContent").startswith("The dog")
        # the stop button: Generate, then the same button once text comes
        browser.eval("document.getElementById('max_tokens').value = 4096; document.getElementById('ignore_eos').checked = true;"
                     "document.getElementById('context').value = 'window'; document.getElementById('go').click()")
        browser.wait_for("document.getElementById('out').textContent.length > 300")  # (window: slow past W)
        time.sleep(0.45)  # (a second click within 400 ms is a double click's, not Stop)
        browser.eval("document.getElementById('go').click()")
        browser.wait_for("document.getElementById('out').dataset.done === '1'")
        assert browser.eval("document.getElementById('status').textContent").startswith("done (cancelled)")
        assert browser.eval("document.getElementById('out').textContent.length") < 4096
        # the API's stop, a stop string, and a bound's message
        r = browser.eval("""(async () => { let asked = false;
            const r = await micromixer.generate({prompt: 'Once', max_tokens: 4096, ignore_eos: true, seed: 1},
                                                () => { if (!asked) { asked = true; micromixer.stop(); } });
            return r; })()""")
        assert r["finish_reason"] == "cancelled" and len(r["text"].encode()) < 4096
        r = browser.eval("micromixer.generate({prompt: 'Once upon a time', temperature: 0, stop: ['Lily']})")
        assert r["finish_reason"] == "stop" and r["text"] == ", there was a little girl named "
        for bad, message in [("{temperature: 3}", "temperature must be a number from 0 to 2"),
                             ("{top_p: 0}", "top_p must be a number in (0, 1]"),
                             ("{context: 'all'}", "context must be one of halve, window, unbounded")]:
            assert browser.eval(f"micromixer.generate({bad}).then(() => 'ok', e => e.message)") == message
        browser.screenshot(tmp_path / "page.png")
    finally:
        page.close()
    urls = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(page.url) for u in urls), [u for u in urls if not u.startswith(page.url)]
    assert {u.rsplit("/", 1)[-1] for u in urls} >= {"model.onnx", "ort-wasm-simd-threaded.wasm.gz", "worker.mjs"}


def test_page_threads_under_cross_origin_isolation(browser, packed, cases):
    page = Page(browser, packed["int8"], "?threads=2", isolate=True)
    try:
        assert browser.eval("crossOriginIsolated") is True and page.ready() == 2
        c = next(c for c in cases[0]["generate"] if c["model"] == "int8" and c["options"]["temperature"] == 0)
        r = browser.eval(f"micromixer.generate({json.dumps(c['options'])})")
        assert r["text"] == c["text"]
    finally:
        page.close()


@pytest.mark.parametrize("damage, message", [("missing", "error: the model (model.onnx) is missing: HTTP 404"),
                                             ("truncated", "error: "), ("not onnx", "error: ")])
def test_page_says_what_is_wrong_with_the_model(browser, packed, tmp_path, damage, message):
    folder = shutil.copytree(packed["int8"], tmp_path / "page")
    model = folder / "model.onnx"
    if damage == "missing":
        model.unlink()
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[:len(model.read_bytes()) // 2])
    else:
        model.write_bytes(b"<html>not a model</html>")
    page = Page(browser, folder)
    try:
        assert page.ready().startswith("error: ")
        status = browser.wait_for("document.getElementById('status').className === 'error' && "
                                  "document.getElementById('status').textContent")
        assert status.startswith(message) and "model" in status, status
    finally:
        page.close()


def test_docs_option_table_is_the_runners():
    """docs/web.md's option table: every option of fields.mjs, its default and its bound's words."""
    import re
    from micromixer_edge.pack.web import option_spec
    spec, defaults = option_spec()
    text = (ROOT / "docs" / "web.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \| (.*) \|$", text, re.M)
    assert [r[0] for r in rows] == list(spec)
    for name, default, what in rows:
        assert json.loads(default) == defaults[name] and what.startswith(spec[name]["what"]), name
