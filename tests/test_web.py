"""mixer-pack --target web: the folder, its runner under Node's test runner (onnxruntime-node)
against Python's truth, and the page in headless Chromium against mixer-run's bytes."""
from __future__ import annotations

import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import urllib.request
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
TIE = 1e-3  # a greedy row may part from Python's where its two best logits are closer than this


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


OPTION_VALUES = [True, False, "1", [], {}, -3, -1, 0, 0.005, 0.5, 1, 2, 2.5, 10, 10.5, 100, 256, 257, 4096, 4097, 8192,
                 8193, -2.5, 1e308, "halve", "window", "nope", ["a"], [""], "", ["a"] * 16, ["a"] * 17, {"10": 5},
                 {"256": 1}, {"10": 101}, {"x": 1}, {"10": "1"}, 2**63 - 2**10, 2**63, -2**63]


def _server_says(name: str, value) -> str | None:
    """The server's 400 message for {name: value} (its own parser), in the runner's words: the
    runtime's option names, no server flags."""
    from micromixer_edge.serve.fields import parse_completion
    from micromixer_edge.serve.settings import Settings
    from micromixer_edge.pack.web import _flag_free
    field = {"repetition_penalty": "repeat_penalty"}.get(name, name)
    if name == "repeat_last_n":  # (no such server field: its bound, as the server would word it)
        bound = SamplingParams.bound(name)
        return None if bound.holds(value, served=True) else f"{name} must be {bound.text(served=True)}"
    try:
        parse_completion(json.dumps({"prompt": "x", field: value}).encode(), Settings(model=""))
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
    cases.append({"options": {"prompt": "a\ud800b"}, "error": "the prompt is not valid Unicode: a lone surrogate U+D800 at character 1"})
    return cases


def _margins(model, prompt: str, tokens: list[int], options: GenerateOptions) -> list[float]:
    """Per generated byte, Python's gap between its two most likely allowed bytes (float32 logits)."""
    logits = sequence_logits(model, encode_prompt(prompt) + tokens, options.context)[len(encode_prompt(prompt)) - 1:]
    logits[:, list(banned_ids(options.sampling))] = -np.inf
    top = np.sort(logits, axis=1)[:, -2:]
    return [float(a) for a in top[:, 1] - top[:, 0]]


def _generate_cases(bundled) -> list[dict]:
    cases = []
    sampled = [dict(temperature=0.8, seed=1), dict(temperature=1.2, top_k=0, top_p=0.9, min_p=0, seed=2**63 - 1),
               dict(temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3,
                    logit_bias={"101": -3, "32": 1.5}, seed=7),
               dict(temperature=0.8, seed=3, stop=["Lily", "\n"], context="window"),
               dict(temperature=0.9, seed=4, context="unbounded", ignore_eos=True)]
    for kind in ("float", "portable", "int8"):
        model = MixerModel(bundled[kind])
        runs = [dict(prompt=p, max_tokens=300, temperature=0) for p in PROMPTS]
        runs += [dict(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=300, **s) for i, s in enumerate(sampled)]
        for o in runs:
            opts = GenerateOptions.of(max_new_tokens=o["max_tokens"], **{k: v for k, v in o.items() if k not in (
                "prompt", "max_tokens", "logit_bias")}, logit_bias=tuple((int(k), float(b)) for k, b in o.get("logit_bias", {}).items()))
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
