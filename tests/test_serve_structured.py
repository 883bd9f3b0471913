"""Structured output through mixer-serve (issue 29), driven by the clients people use: openai's
`response_format` and `beta.chat.completions.parse`, LangChain's `with_structured_output`,
vLLM's `structured_outputs` and llama.cpp's `grammar`/`json_schema` as extra fields. Truths:
jsonschema, pydantic, re.fullmatch, and the engine run alone for the same request."""
import concurrent.futures
import json
import re
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from micromixer_edge.runtime.constraint import Constraint  # noqa: E402
from serving import alone, sse_docs  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


class Pet(pydantic.BaseModel):
    name: str
    legs: int
    happy: bool


def _alone(bundled, prompt, constraint, seed, n=300):
    return alone(bundled["int8"], prompt, max_new_tokens=n, seed=seed, constraint=constraint)[:2]


def test_openai_chat_response_format_json_schema_and_json_object(server, bundled):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        done = server.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "A person"}],
                                                     response_format=rf, max_tokens=300, seed=seed)
        choice = done.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert (choice.message.content, "stop") == _alone(bundled, "A person\n\n", Constraint.json_schema(SCHEMA), seed)
        obj = server.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                    response_format={"type": "json_object"}, max_tokens=2000, seed=seed)
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_openai_parse_returns_a_pydantic_object(server):
    for seed in range(3):
        done = server.client.beta.chat.completions.parse(
            model="m", messages=[{"role": "user", "content": "A pet"}], response_format=Pet, max_tokens=400, seed=seed)
        assert isinstance(done.choices[0].message.parsed, Pet)


def test_langchain_with_structured_output(server, bundled):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="none", model=bundled["int8"].stem,
                                       max_tokens=400, temperature=0.8, seed=4)
    pet = chat.with_structured_output(Pet, method="json_schema").invoke("Tell me about a pet")
    assert isinstance(pet, Pet)


def test_vllm_and_llama_cpp_dialects_and_streaming(server, bundled):
    c = server.client
    cases = [({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2,4}"}}, lambda t: re.fullmatch("[0-9]{3}-[a-z]{2,4}", t)),
             ({"structured_outputs": {"choice": ["red", "green"]}}, lambda t: t in ("red", "green")),
             ({"structured_outputs": {"json": SCHEMA}}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) or True),
             ({"structured_outputs": {"grammar": 'root ::= "(" [a-z]{1,5} ")"'}}, lambda t: re.fullmatch(r"\([a-z]{1,5}\)", t)),
             ({"grammar": 'root ::= ("yes" | "no") "!"'}, lambda t: t in ("yes!", "no!")),
             ({"json_schema": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) or True)]
    for extra, check in cases:
        whole = c.completions.create(model="m", prompt="Once", max_tokens=300, seed=8, n=2, extra_body=extra)
        streamed = c.completions.create(model="m", prompt="Once", max_tokens=300, seed=8, n=2, extra_body=extra,
                                        stream=True)
        texts = ["", ""]
        for chunk in streamed:
            for ch in chunk.choices:
                texts[ch.index] += ch.text
        assert [ch.text for ch in whole.choices] == texts
        for ch in whole.choices:
            assert ch.finish_reason == "stop" and check(ch.text), (extra, ch.text)


def _post(server, body, path="/v1/completions"):
    data = json.dumps(body) if not isinstance(body, str) else body
    return httpx.post(server.url + path, content=data, headers={"Content-Type": "application/json"}, timeout=60)


class Deep(dict):
    """A schema nested 1,000 arrays deep, written as JSON text (json.dumps would recurse too deep)."""
    def text(self):
        return '{"type":"array","items":' * 1000 + '{"type":"integer"}' + "}" * 1000


@pytest.mark.parametrize("fields, param, reason", [
    ({"grammar": 'root ::= "a"', "json_schema": SCHEMA}, "json_schema", "give one of"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs", "give one of"),
    ({"json_schema": {"type": "strin"}}, "json_schema", "Invalid type"),
    ({"json_schema": {"type": "object", "propertyNames": {}}}, "json_schema", "propertyNames"),
    ({"structured_outputs": {"regex": "ab[c-"}}, "structured_outputs", "unclosed character class"),
    ({"grammar": 'root ::= "a" b'}, "grammar", "Rule 'b' not found"),
    ({"grammar": 'root ::= "a" ['}, "grammar", "GBNF"),
    ({"structured_outputs": {"regex": "[^\\x00-\\x{10FFFF}]"}}, "structured_outputs", "no text"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty list"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "one of json, regex"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"json_schema": {"enum": ["x" * (1 << 20)]}}, "json_schema", "over 64 KB"),
    ({"json_schema": Deep()}, "json_schema", "nests deeper"),
])
def test_bad_constraints_are_400s_naming_the_field(server, fields, param, reason):
    for path, base in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        body = json.dumps({**base, "max_tokens": 5, **fields})
        for name, value in fields.items():  # (a Deep schema goes in as text)
            if isinstance(value, Deep):
                body = body.replace(json.dumps(value), value.text())
        r = _post(server, body, path)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and reason in error["message"], error
    assert httpx.get(server.url + "/health").status_code == 200


_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) |
                     st.text(max_size=20), lambda inner: st.lists(inner, max_size=4) |
                     st.dictionaries(st.sampled_from(["type", "properties", "items", "enum", "pattern", "anyOf",
                                                      "regex", "choice", "json", "grammar", "schema", "json_schema",
                                                      "required", "minimum", "maxLength", "x"]) | st.text(max_size=5),
                                     inner, max_size=4), max_leaves=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["response_format", "structured_outputs", "grammar", "json_schema"]), value=_json)
def test_fuzzed_constraint_fields_never_give_a_5xx(server, field, value):
    r = _post(server, {"prompt": "x", "max_tokens": 8, field: value})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["param"] in (field, None)


def _gaps_while(server, requests) -> tuple[list, list[float]]:
    """Post `requests` (bodies) at once while streams run one after another beside them: (the
    answers, the gaps in seconds between one stream's chunks)."""
    gaps, done = [], threading.Event()

    def stream():
        body = {"prompt": "Once upon a time", "max_tokens": 1000, "stream": True, "ignore_eos": True, "seed": 1}
        while not done.is_set():
            last = None
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
                for _ in sse_docs(r):
                    now = time.monotonic()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

    with concurrent.futures.ThreadPoolExecutor(len(requests) + 1) as pool:
        streaming = pool.submit(stream)
        time.sleep(0.3)
        answers = list(pool.map(lambda body: _post(server, body), requests))
        done.set()
        streaming.result()
    return answers, gaps


def test_ten_hostile_constraints_do_not_stall_a_stream(server):
    """Ten large grammars compiling at once (each near the 64 KB limit) while a stream runs: its
    longest gap between chunks stays under 100 ms (they compile off the decode thread)."""
    hostile = ["root ::= " + " | ".join(f'"w{i}" [a-z]{{0,9}} ("x" | "{k}")*' for i in range(1900)) for k in range(10)]
    # (ten different ones: a compiled constraint is cached by its text)
    answers, gaps = _gaps_while(server, [{"prompt": "x", "max_tokens": 5, "grammar": g} for g in hostile])
    # (429: past --constraint-seconds in the compile thread's queue)
    assert {r.status_code for r in answers} <= {200, 400, 429} and all(len(g) < 65536 for g in hostile)
    assert len(gaps) > 100 and max(gaps) < 0.1, max(gaps)


def test_aliases_vllm_guided_and_llama_cpp_response_format(server):
    cases = [({"guided_json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) or True),
             ({"guided_json": json.dumps(SCHEMA)}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) or True),
             ({"guided_regex": "[a-c]{4}"}, lambda t: re.fullmatch("[a-c]{4}", t)),
             ({"guided_choice": ["up", "down"]}, lambda t: t in ("up", "down")),
             ({"guided_grammar": 'root ::= "x" [0-9]'}, lambda t: re.fullmatch("x[0-9]", t)),
             ({"response_format": {"type": "json_object", "schema": SCHEMA}},
              lambda t: jsonschema.validate(json.loads(t), SCHEMA) or True)]
    for extra, check in cases:
        r = _post(server, {"prompt": "Once", "max_tokens": 300, "seed": 2, **extra})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop" and check(choice["text"]), (extra, choice)


def test_a_constraint_that_fails_while_generating_is_a_400(server):
    for stream in (False, True):
        body = {"prompt": "x", "max_tokens": 20, "structured_outputs": {"regex": "a\u0000b"}, "stream": stream}
        r = _post(server, body)
        if not stream:
            assert r.status_code == 400, r.text
            error = r.json()["error"]
        else:
            assert r.status_code == 200
            error = next(json.loads(line[6:]) for line in r.text.splitlines()
                         if line.startswith("data: {") and '"error"' in line)["error"]
        assert error["code"] == "constraint_failed" and error["param"] == "structured_outputs", error
    assert httpx.get(server.url + "/health").status_code == 200


def test_constraint_seconds_bounds_the_wait_and_the_compile(bundled):
    """--constraint-seconds 0.05: a grammar that takes ~0.3 s to compile is a 400 that says so;
    those behind it while the compile thread is busy get a 429 or the same 400; the server stays
    healthy and serves a cheap constraint afterwards."""
    from serving import Served
    s = Served(bundled["int8"], "--constraint-seconds", "0.05")
    try:
        slow = ["root ::= " + " | ".join(f'"w{i}" [a-z]{{0,9}} ("x" | "{k}")*' for i in range(1900)) for k in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda g: _post(s, {"prompt": "x", "max_tokens": 5, "grammar": g}), slow))
        assert {r.status_code for r in answers} <= {400, 429}
        refused = [r.json()["error"] for r in answers if r.status_code == 400]
        assert refused and all(e["param"] == "grammar" and "--constraint-seconds" in e["message"] for e in refused)
        time.sleep(1.5)  # (the compile thread finishes what it started)
        ok = _post(s, {"prompt": "x", "max_tokens": 5, "grammar": 'root ::= "yes"'})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "yes"
    finally:
        assert s.stop() == 0


def test_ten_constraints_slow_at_run_time_do_not_stall_a_stream(server):
    """An ambiguous grammar's masks cost more with each byte (the decode thread computes them):
    ten such rows beside a stream end with 'constraint_failed' once a mask takes over 2 ms, and
    the stream's longest gap between chunks stays under 100 ms."""
    slow = {"prompt": "x", "max_tokens": 4000, "temperature": 0, "logit_bias": {"97": 50},
            "grammar": 'start: e\ne: e e | "a" | "a" "a" | e "b" e'}
    answers, gaps = _gaps_while(server, [slow] * 10)
    assert {r.status_code for r in answers} == {400}
    assert all(r.json()["error"]["code"] == "constraint_failed" for r in answers)
    assert len(gaps) > 50 and max(gaps) < 0.1, max(gaps)
