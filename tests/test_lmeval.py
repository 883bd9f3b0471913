"""lm-eval (EleutherAI's harness, the `lmeval` extra) against mixer-serve, as its users run it:
`python -m lm_eval --model local-completions` with the server's remote tokenizer (issue 22,
item 8). One log-likelihood task (multiple choice: prompt token ids, echo, prompt logprobs) and
one generation task, on a few local examples written here. Scores are not the point; the
harness running end to end, and its numbers being the model's, are:
- each log-likelihood lm-eval reports is the sum of the continuation's byte logprobs that the
  token-by-token oracle gives (tests/oracle.py), and is_greedy is whether each byte was the argmax;
- each generation is the engine's greedy text, cut where lm-eval's `until` cuts it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lm_eval")  # the lmeval extra
pytest.importorskip("starlette")
from serving import Served  # noqa: E402

pytestmark = [pytest.mark.lmeval, pytest.mark.slow]

CHOICES = [("Once upon a time, there was a little", [" girl", " xylophone"]),
           ("Lily wanted to play in the", [" park", " quantum", " sun"]),
           ("Tom said, \"I am", [" happy!\"", " café"]),
           ("", ["Once upon a time", "Zzzq xv"])]  # an empty context: lm-eval sends [bos] + continuation
GENERATE = ["Once upon a time, there was a", "One day, Tim went to the"]
TASKS = """task: tiny_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
doc_to_text: "{{{{context}}}}"
target_delimiter: ""
"""


def _write_tasks(d) -> None:
    with open(d / "mc.jsonl", "w") as f:
        for context, choices in CHOICES:
            f.write(json.dumps({"context": context, "choices": choices, "label": 0}) + "\n")
    with open(d / "gen.jsonl", "w") as f:
        for context in GENERATE:
            f.write(json.dumps({"context": context, "target": " park"}) + "\n")
    (d / "tiny_mc.yaml").write_text(TASKS.format(name="mc", data=d / "mc.jsonl", kind="multiple_choice")
                                    + 'doc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
                                      "metric_list:\n  - metric: acc\n")
    (d / "tiny_gen.yaml").write_text(TASKS.format(name="gen", data=d / "gen.jsonl", kind="generate_until")
                                     + 'doc_to_target: "{{target}}"\ngeneration_kwargs:\n  until: ["."]\n'
                                       "  max_gen_toks: 24\n  do_sample: false\n"
                                       "metric_list:\n  - metric: exact_match\n")


@pytest.fixture(scope="module")
def run(bundled, tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    _write_tasks(d)
    server = Served(bundled["int8"])
    try:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(d / "hf")}
        out = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
             f"base_url={server.url}/v1/completions,model={bundled['int8'].stem},max_retries=1",
             "--tasks", "tiny_mc,tiny_gen", "--include_path", str(d), "--output_path", str(d / "out"),
             "--log_samples"], capture_output=True, text=True, timeout=300, env=env)
    finally:
        assert server.stop() == 0
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Using remote tokenizer" in out.stderr  # lm-eval found /tokenizer_info and /tokenize
    samples = {}
    for f in (d / "out").rglob("samples_*.jsonl"):
        samples[f.name.split("_")[2]] = [json.loads(line) for line in f.read_text().splitlines()]
    return samples


@pytest.fixture(scope="module")
def model(bundled):
    from micromixer_edge.runtime.model import MixerModel
    return MixerModel(bundled["int8"])


def test_lm_eval_log_likelihoods_are_the_models(run, model):
    from oracle import ContextOracle
    assert len(run["mc"]) == len(CHOICES)
    for sample in run["mc"]:
        for i, args in enumerate(sample["arguments"].values()):
            context, continuation = args["arg_0"].encode(), args["arg_1"].encode()
            ids = [1, *context, *continuation]
            logits = ContextOracle(model, "halve").feed(ids)[:-1].astype(np.float64)
            logp = logits - logits.max(1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(1, keepdims=True))
            at = range(len(context), len(ids) - 1)  # logp[t] predicts ids[t + 1]
            want = sum(logp[t, ids[t + 1]] for t in at)
            greedy = all(logp[t].argmax() == ids[t + 1] for t in at)
            ll, is_greedy = sample["resps"][i][0]
            assert float(ll) == pytest.approx(want, abs=1e-3) and (is_greedy == "True") == greedy


def test_lm_eval_generations_are_the_greedy_text_cut_at_until(run, model):
    from micromixer_edge.runtime.engine import GenerateOptions
    from micromixer_edge.runtime.generate import generate
    assert len(run["gen"]) == len(GENERATE)
    for sample in run["gen"]:
        context = sample["doc"]["context"]
        want = generate(model, context, GenerateOptions.of(max_new_tokens=24, temperature=0)).split(".")[0]
        assert sample["resps"][0][0] == want
