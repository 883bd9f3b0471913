"""Several choices in one request (issue 22, items 2 and 4): prompts as OpenAI allows (a string, a
list of strings, a list of token ids, a list of such lists) and n > 1, whose rows fork from the
prompt's state, folded once. Truth: choice i (prompt p, choice j, i = p * n + j) is what the
engine makes alone for its prompt with seed + i."""
import concurrent.futures

import pytest

httpx = pytest.importorskip("httpx")  # the test extra; the fast tier runs without it
pytest.importorskip("openai")
pytest.importorskip("starlette")
from serving import Served, alone, wait_idle  # noqa: E402

from micromixer_edge.runtime.engine import Engine, GenerateOptions  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402


def _alone(bundled, prompt, n, seed, **kw):
    return alone(bundled["int8"], prompt, max_new_tokens=n, seed=seed, **kw)[:2]


def test_a_list_of_prompts_gives_one_choice_each_in_order(server, bundled):
    prompts = ["Once upon a time", "Lily and Ben", "The little dog"]
    done = server.client.completions.create(model="m", prompt=prompts, max_tokens=60, seed=5)
    assert [c.index for c in done.choices] == [0, 1, 2]
    for i, (p, c) in enumerate(zip(prompts, done.choices)):
        assert (c.text, c.finish_reason) == _alone(bundled, p, 60, 5 + i)
    assert done.usage.prompt_tokens == sum(len(p) + 1 for p in prompts)


def test_token_id_prompts_are_their_bytes(server, bundled):
    ids = [list(b"Once upon"), list(b"Tom had")]
    done = server.client.completions.create(model="m", prompt=ids, max_tokens=40, seed=2)
    one = server.client.completions.create(model="m", prompt=list(b"Once upon"), max_tokens=40, seed=2)
    assert [c.text for c in done.choices] == [_alone(bundled, "Once upon", 40, 2)[0], _alone(bundled, "Tom had", 40, 3)[0]]
    assert one.choices[0].text == done.choices[0].text


def test_n_choices_fork_from_one_fold_and_each_is_its_seeds(server, bundled):
    prompt = "One day, a girl named"
    done = server.client.completions.create(model="m", prompt=prompt, max_tokens=80, n=3, seed=11, temperature=1.0)
    assert [c.index for c in done.choices] == [0, 1, 2]
    for j, c in enumerate(done.choices):
        assert (c.text, c.finish_reason) == _alone(bundled, prompt, 80, 11 + j, temperature=1.0)
    assert done.usage.prompt_tokens == len(prompt) + 1  # folded once, not three times
    assert done.usage.completion_tokens == sum(len(c.text.encode()) for c in done.choices)


def test_n_with_a_list_of_prompts_streamed_equals_whole(server, bundled):
    prompts, kw = ["The sun was", "Mom said,"], dict(model="m", max_tokens=50, n=2, seed=40)
    whole = server.client.completions.create(prompt=prompts, **kw)
    texts, finish = {}, {}
    for chunk in server.client.completions.create(prompt=prompts, stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            finish[c.index] = c.finish_reason or finish.get(c.index)
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert [finish[i] for i in range(4)] == [c.finish_reason for c in whole.choices]
    assert whole.choices[3].text == _alone(bundled, "Mom said,", 50, 43)[0]  # prompt 1, choice 1: i = 3


def test_without_a_seed_the_n_choices_differ(server):
    """Each choice draws its own seed. Sampled at T 2 without top-k/top-p/min-p (1.8 bits a byte
    on average for a story prompt, measured), 100-byte choices practically never coincide; at
    T 1 with the default filters two did once (a clean-clone run: 60 bytes, two alike)."""
    done = server.client.completions.create(model="m", prompt="Once upon a time", max_tokens=100, n=3,
                                            temperature=2.0, top_p=1.0, extra_body={"ignore_eos": True,
                                                                                   "top_k": 0, "min_p": 0})
    texts = [c.text for c in done.choices]
    assert len(set(texts)) == 3, texts


def test_a_choice_is_the_same_whatever_else_runs(server, bundled):
    """n = 4 requests beside 8 single ones: each choice equals its seed's alone."""
    def one(i):
        return server.client.completions.create(model="m", prompt="Lily and Ben", max_tokens=40, seed=100 + i)
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        others = [pool.submit(one, i) for i in range(8)]
        many = pool.submit(lambda: server.client.completions.create(model="m", prompt="Lily and Ben", max_tokens=40,
                                                                    n=4, seed=200))
        for j, c in enumerate(many.result().choices):
            assert c.text == _alone(bundled, "Lily and Ben", 40, 200 + j)[0]
        for i, f in enumerate(others):
            assert f.result().choices[0].text == _alone(bundled, "Lily and Ben", 40, 100 + i)[0]


def test_chat_with_n(server, bundled):
    done = server.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tom had a"}],
                                                 max_tokens=30, n=2, seed=9)
    assert [c.message.content for c in done.choices] == [_alone(bundled, "Tom had a\n\n", 30, 9 + j)[0] for j in range(2)]


def test_the_health_counts_the_forks_and_frees_them(server):
    body = {"prompt": "Once", "max_tokens": 4000, "n": 5, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", server.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines)
        assert httpx.get(server.url + "/health").json()["active_rows"] == 5
    assert wait_idle(server.url)["active_rows"] == 0


def test_logit_bias_and_openais_penalties(server, bundled):
    """logit_bias -100 on the space byte: no space is ever written; presence and frequency
    penalties: the engine's bytes for the same options (counted over the bytes generated)."""
    done = server.client.completions.create(model="m", prompt="Once upon a time", max_tokens=120, seed=4,
                                            logit_bias={"32": -100})
    assert " " not in done.choices[0].text and len(done.choices[0].text) > 20
    kw = dict(presence_penalty=1.2, frequency_penalty=0.8)
    got = server.client.completions.create(model="m", prompt="Lily and Ben", max_tokens=120, seed=4, **kw)
    assert got.choices[0].text == _alone(bundled, "Lily and Ben", 120, 4, **kw)[0]
    assert got.choices[0].text != _alone(bundled, "Lily and Ben", 120, 4)[0]  # they act


def test_penalty_counts_go_into_snapshots(bundled):
    """A row with OpenAI's penalties, saved and resumed, makes the bytes of one run."""
    model = MixerModel(bundled["int8"])
    opts = dict(seed=8, frequency_penalty=1.5, presence_penalty=0.5, ignore_eos=True)
    engine = Engine(model)
    whole = engine.add("The little dog", GenerateOptions.of(max_new_tokens=140, **opts))
    text = "".join(p for _, p in engine.run())
    first_engine = Engine(model)
    row = first_engine.add("The little dog", GenerateOptions.of(max_new_tokens=70, **opts))
    first = "".join(p for _, p in first_engine.run())
    again = Engine(model)
    again.restore(first_engine.snapshot(row), GenerateOptions.of(max_new_tokens=70, **opts))
    assert first + "".join(p for _, p in again.run()) == text and whole.stats.new_tokens == 140


def test_more_prompts_than_rows_wait_for_rows_and_lm_eval_stops_are_taken(bundled):
    """lm-eval sends --batch_size prompts in one request, and a task's stop strings plus its eos
    string: 10 prompts on 4 rows, 5 stop strings; each choice is still its prompt's alone."""
    s = Served(bundled["int8"], "--max-batch", "4", "--max-queue", "8")
    try:
        prompts = [f"Story {i}: Once upon a time" for i in range(10)]
        stops = ["\n\n", ".", "!", "?", "\x02"]
        done = s.client.completions.create(model="m", prompt=prompts, max_tokens=30, seed=3, stop=stops)
        assert [c.index for c in done.choices] == list(range(10))
        for i, (p, c) in enumerate(zip(prompts, done.choices)):
            assert (c.text, c.finish_reason) == _alone(bundled, p, 30, 3 + i, stop=stops)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": ["x"] * 13}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"  # over --max-batch + --max-queue
    finally:
        assert s.stop() == 0
