"""Structured output in the engine and mixer-run (issue 29): every output checked by an
independent truth: jsonschema's validator, Python's `re.fullmatch`, recognizers written here for
the grammars, the model's own scores along the text for forced bytes' logprobs, and the engine
with forced runs switched off (one masked byte a step) for the forced-run folds."""
import ast
import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest

llguidance = pytest.importorskip("llguidance")  # the structured extra
jsonschema = pytest.importorskip("jsonschema")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from micromixer_edge.errors import MixerError  # noqa: E402
from micromixer_edge.runtime.constraint import Constraint, Matcher  # noqa: E402
from micromixer_edge.runtime.engine import Engine, GenerateOptions  # noqa: E402
from micromixer_edge.runtime.logprobs import log_softmax  # noqa: E402
from micromixer_edge.runtime.model import MixerModel  # noqa: E402

PROMPTS = ["Once upon a time", "Tom and Lily", "The answer is:"]
MODELS = {}


def _model(bundled, kind="int8") -> MixerModel:
    if kind not in MODELS:
        MODELS[kind] = MixerModel(bundled[kind])
    return MODELS[kind]


def _run(model, jobs, **kw) -> list[tuple[str, str]]:
    """(text, finish) of each (prompt, options) job, all in one batch."""
    engine = Engine(model)
    rows = [engine.add(prompt, options) for prompt, options in jobs]
    out = {row.id: "" for row in rows}
    for row, piece in engine.run():
        out[row.id] += piece
    return [(out[r.id], r.finish_reason) for r in rows]


def _options(constraint, seed, temperature=0.8, n=1500, **kw):
    if isinstance(kw.get("logit_bias"), dict):
        kw["logit_bias"] = tuple(kw["logit_bias"].items())
    return GenerateOptions.of(max_new_tokens=n, temperature=temperature, seed=seed, constraint=constraint, **kw)


# --- JSON schemas: hypothesis-made, every output validated by jsonschema -------------------------
_names = st.from_regex(r"[a-z]{1,6}", fullmatch=True)
_leaf = st.one_of(
    st.just({"type": "boolean"}), st.just({"type": "null"}), st.just({"type": "integer"}), st.just({"type": "number"}),
    st.just({"type": "string"}),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-1000, 1000), st.integers(0, 5000)),
    st.builds(lambda lo, span: {"type": "number", "minimum": lo / 4, "maximum": lo / 4 + span},
              st.integers(-400, 400), st.integers(0, 500)),
    st.integers(1, 20).map(lambda n: {"type": "string", "maxLength": n}),
    st.sampled_from([r"^[a-z]{1,8}$", r"^[0-9]{3}-[0-9]{4}$", r"^(yes|no|maybe)$", r"^[A-Z][a-z]*$"]).map(
        lambda p: {"type": "string", "pattern": p}),
    st.lists(st.text(st.sampled_from("abcé日 \"\\"), min_size=1, max_size=5), min_size=1, max_size=4,
             unique=True).map(lambda v: {"enum": v}),
)


def _object(inner):
    return st.dictionaries(_names, inner, min_size=1, max_size=4).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: {"type": "object", "properties": props, "required": required,
                              "additionalProperties": False}))


SCHEMAS = st.recursive(_leaf, lambda inner: st.one_of(
    st.builds(lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + extra},
              inner, st.integers(0, 2), st.integers(0, 3)),
    _object(inner),
    st.lists(inner, min_size=2, max_size=3).map(lambda options: {"anyOf": options}),
), max_leaves=6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2**32))
def test_hypothesis_schemas_give_json_that_validates(bundled, schema, seed):
    constraint = Constraint.json_schema(schema)
    jobs = [(PROMPTS[i], _options(constraint, seed + i)) for i in range(3)]
    for text, finish in _run(_model(bundled), jobs):
        assert finish == "stop", (schema, text)
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_a_schema_with_every_kind_of_field_on_float_and_int8(bundled, kind):
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "height": {"type": "number"}, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}},
        "mood": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^(happy|sad)$"}]},
        "extra": {"type": "object"}}, "required": ["name", "age", "pets"]}
    constraint = Constraint.json_schema(schema)
    for text, finish in _run(_model(bundled, kind), [(p, _options(constraint, s)) for s, p in enumerate(PROMPTS)]):
        assert finish == "stop"
        jsonschema.validate(json.loads(text), schema)
        # compact: no blanks around separators outside strings
        assert not re.search(r'[,:{\[]\s|\s[,:}\]]', re.sub(r'"(\\.|[^"\\])*"', '""', text))


def test_json_object_mode_gives_an_object(bundled):
    for text, finish in _run(_model(bundled), [(p, _options(Constraint.json_object(), s)) for s, p in enumerate(PROMPTS)]):
        assert finish == "stop"
        assert isinstance(json.loads(text), dict)


# --- regexes: hypothesis-made, re.fullmatch ------------------------------------------------------
_piece = st.one_of(
    st.sampled_from(["[a-z]", "[0-9]", "[A-Z]", "[aeiou]", r"\d", "[a-c]", "x", "yes", "é", "日本"]).flatmap(
        lambda atom: st.sampled_from(["", "?", "{1,3}", "{2}", "{0,4}"]).map(lambda q: f"(?:{atom}){q}")),
    st.lists(st.sampled_from(["cat", "dog", "a b", "7", "-"]), min_size=2, max_size=3, unique=True).map(
        lambda alts: "(" + "|".join(alts) + ")"),
)
REGEXES = st.lists(_piece, min_size=1, max_size=4).map("".join)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=REGEXES, seed=st.integers(0, 2**32))
def test_hypothesis_regexes_fullmatch(bundled, pattern, seed):
    constraint = Constraint.regex(pattern)
    for text, finish in _run(_model(bundled), [(p, _options(constraint, seed + i)) for i, p in enumerate(PROMPTS)]):
        assert finish == "stop"
        assert re.fullmatch(pattern, text), (pattern, text)


# --- grammars: recognizers written here ------------------------------------------------------------
ARITHMETIC = r'''
root   ::= expr
expr   ::= term (("+" | "-") term){0,3}
term   ::= factor (("*" | "/") factor){0,2}
factor ::= number | "(" inner ")"
inner  ::= number (("+" | "-" | "*") number){0,3}
number ::= "0" | [1-9] [0-9]{0,2}
'''
LIST = r'''
root ::= "[" item ("," item){0,4} "]"
item ::= [a-z]{1,8}
'''
JSON_GBNF = r'''
root   ::= "{" pair ("," pair){0,3} "}"
pair   ::= string ":" value
value  ::= scalar | "[" (scalar ("," scalar){0,2})? "]"
scalar ::= string | number | "true" | "false" | "null"
string ::= "\"" [a-z ]{0,10} "\""
number ::= "-"? ("0" | [1-9] [0-9]{0,3})
'''
LARK = r'''
start: greeting " " name "!"
greeting: "Hello" | "Hi"
name: /[A-Z][a-z]{1,7}/
'''


def _arithmetic(text: str) -> bool:
    """Integers (no leading zeros), + - * /, parentheses: Python's own parser decides."""
    if not re.fullmatch(r"[0-9+\-*/()]+", text):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div)
    return all(isinstance(node, allowed) for node in ast.walk(tree)) and \
        all(isinstance(n.value, int) for n in ast.walk(tree) if isinstance(n, ast.Constant))


def _word_list(text: str) -> bool:
    items = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else []
    return 1 <= len(items) <= 5 and all(re.fullmatch("[a-z]{1,8}", i) for i in items)


def _small_json(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    def scalar(v):
        return v is None or isinstance(v, (bool, int)) or isinstance(v, str) and re.fullmatch("[a-z ]{0,10}", v)
    return isinstance(doc, dict) and 1 <= len(json.loads(text, object_pairs_hook=list)) <= 4 and all(
        scalar(v) or isinstance(v, list) and len(v) <= 3 and all(scalar(x) for x in v) for v in doc.values())


@pytest.mark.parametrize("grammar, syntax, recognize", [
    (ARITHMETIC, "gbnf", _arithmetic), (LIST, "gbnf", _word_list), (JSON_GBNF, "gbnf", _small_json),
    (LARK, "lark", lambda t: re.fullmatch(r"(Hello|Hi) [A-Z][a-z]{1,7}!", t) is not None)])
def test_grammars_give_what_a_recognizer_accepts(bundled, grammar, syntax, recognize):
    constraint = Constraint.grammar(grammar, syntax)
    jobs = [(p, _options(constraint, seed, temperature=t)) for seed in range(4) for p in PROMPTS[:2] for t in (0, 0.8)]
    for text, finish in _run(_model(bundled), jobs):
        assert finish == "stop" and recognize(text), text


def test_recognizers_refuse_what_they_should():  # (else the test above could not fail)
    assert not _arithmetic("1+(2") and not _arithmetic("007") and _arithmetic("10*(2+3)")
    assert not _word_list("[a,,b]") and _word_list("[ab,c]")
    assert not _small_json('{"a":[1,2,3,4]}') and _small_json('{"a b":[1,null],"c":true}')


def test_choice_gives_one_of_them(bundled):
    choices = ["happy", "sad", "a little angry", "日本"]
    jobs = [(p, _options(Constraint.choice(choices), s)) for s in range(4) for p in PROMPTS]
    assert {finish for _, finish in _run(_model(bundled), jobs)} == {"stop"}
    assert all(text in choices for text, _ in _run(_model(bundled), jobs))


# --- exact: order of the mask, eos, length ------------------------------------------------------
def test_the_mask_comes_after_bias_and_before_the_filters(bundled):
    model = _model(bundled)
    colours = Constraint.choice(["red", "blue"])
    assert _run(model, [("x", _options(colours, 0, temperature=0, logit_bias={ord("b"): 100}))])[0] == ("blue", "stop")
    assert _run(model, [("x", _options(colours, 0, temperature=0, logit_bias={ord("r"): 100}))])[0] == ("red", "stop")
    # a byte the bias favours but the constraint refuses is never taken
    text, _ = _run(model, [("x", _options(Constraint.regex("[a-c]{6}"), 1, logit_bias={ord("z"): 100}))])[0]
    assert re.fullmatch("[a-c]{6}", text)
    # top_k 1 keeps the most likely *allowed* byte: filters after the mask, else nothing would be left
    for seed in range(3):
        text, finish = _run(model, [(PROMPTS[0], _options(Constraint.regex("[xyz]{5}"), seed, top_k=1))])[0]
        assert finish == "stop" and re.fullmatch("[xyz]{5}", text)


def test_max_tokens_first_gives_length_and_a_prefix(bundled):
    schema = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 40}}, "required": ["story"]}
    for n in (1, 5, 12, 30):
        text, finish = _run(_model(bundled), [(PROMPTS[0], _options(Constraint.json_schema(schema), 3, n=n))])[0]
        assert finish == "length" and len(text.encode()) == n and '{"story":"'.startswith(text[:10])


def test_eos_only_where_the_constraint_accepts(bundled):
    """With eos strongly favoured, a row still ends only on a complete text."""
    for seed in range(4):
        opts = _options(Constraint.regex("[a-z]{3,6}"), seed, logit_bias={2: 30})
        text, finish = _run(_model(bundled), [(PROMPTS[1], opts)])[0]
        assert finish == "stop" and re.fullmatch("[a-z]{3,6}", text)
        assert len(text) == 3  # (eos as soon as it may come)


# --- forced bytes: a fold, not a sample; logprobs still reported --------------------------------
def test_forced_bytes_draw_nothing_and_take_one_step(bundled):
    engine = Engine(_model(bundled))
    row = engine.add("Once", _options(Constraint.choice([" upon a time, there was"]), 7))
    touched = engine.step()
    assert touched == [row] and row.finish_reason == "stop" and row.take_text() == " upon a time, there was"
    assert row.sampler.rng.getstate() == random.Random(7).getstate()  # no draw
    # a schema's fixed parts: each step takes at most one sampled byte, forced ones come with it
    engine = Engine(_model(bundled))
    schema = {"type": "object", "properties": {"kind": {"const": "story"}, "n": {"type": "integer", "minimum": 1,
              "maximum": 9}}, "required": ["kind", "n"], "additionalProperties": False}
    row = engine.add("Once", _options(Constraint.json_schema(schema), 1))
    steps = 0
    while not row.done:
        engine.step()
        steps += 1
    assert row.stats.ids and json.loads(bytes(row.stats.ids)) ["kind"] == "story"
    assert steps <= 3 < len(row.stats.ids)  # '{"kind":"story","n":' forced, a digit sampled, '}' forced


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_forced_bytes_logprobs_are_the_models_scores_along_the_text(bundled, kind):
    model = _model(bundled, kind)
    schema = {"type": "object", "properties": {"title": {"const": "The end"}, "n": {"type": "integer",
              "minimum": 10, "maximum": 99}}, "required": ["title", "n"], "additionalProperties": False}
    engine = Engine(model)
    row = engine.add("Once upon a time", _options(Constraint.json_schema(schema), 4, logprobs=3))
    text = "".join(p for _, p in engine.run())
    entries = row.take_logprobs()
    ids = [1, *b"Once upon a time", *text.encode()]
    logits, _ = model.prefill(np.asarray([ids], np.int64))  # (1, T, V), the text in one call
    logp = log_softmax(logits[0].astype(np.float64))
    start = len(ids) - len(text.encode())
    assert len(entries) == len(text.encode()) == len(row.stats.ids)
    for j, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(logp[start + j - 1, ids[start + j]], abs=2e-3)


# --- nothing else changes -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float", "int8"])
def test_an_unconstrained_row_keeps_its_bytes_beside_constrained_ones(bundled, kind):
    model = _model(bundled, kind)
    plain = [(p, GenerateOptions.of(max_new_tokens=300, seed=s, context=c))
             for s, (p, c) in enumerate(zip(PROMPTS, ["halve", "window", "unbounded"]))]
    alone = _run(model, plain)
    constrained = [(p, _options(c, 9)) for p, c in zip(PROMPTS, [Constraint.json_object(), Constraint.regex(
        "[a-z ]{0,80}"), Constraint.grammar(JSON_GBNF)])]
    mixed = _run(model, constrained + plain + constrained)
    assert mixed[3:6] == alone
    assert mixed[:3] == mixed[6:] == _run(model, constrained)  # and the constrained rows, alone or not


@pytest.mark.parametrize("kind", ["float", "int8"])
@pytest.mark.parametrize("context", ["halve", "window", "unbounded"])
def test_forced_runs_fold_as_one_masked_byte_a_step_would(bundled, kind, context, monkeypatch):
    """Greedy, a prompt near W so that runs cross the mode's boundary: the same bytes with forced
    runs folded in calls of their own and with them switched off (each forced byte then the only
    one its mask allows, taken one a step by the shared call and re-folds)."""
    model = _model(bundled, kind)
    prompt = ("Lily and Ben went to the park. " * 9)[:250]
    schema = {"type": "array", "items": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
              "mark": {"const": "a long fixed string of bytes"}}, "required": ["word", "mark"]}, "minItems": 3,
              "maxItems": 3}
    jobs = [(prompt[:250 - k], _options(Constraint.json_schema(schema), 0, temperature=0, context=context))
            for k in (0, 7, 30)]
    with_runs = _run(model, jobs)
    monkeypatch.setattr(Matcher, "forced", lambda self: b"")
    assert _run(model, jobs) == with_runs
    assert all(finish == "stop" for _, finish in with_runs)


# --- bad constraints: one line naming the reason -------------------------------------------------
@pytest.mark.parametrize("constraint, reason", [
    (lambda: Constraint.regex("[a-"), "unclosed character class"),
    (lambda: Constraint.grammar('root ::= "a" | b'), "Rule 'b' not found"),
    (lambda: Constraint.grammar('root ::= "a" (', "gbnf"), "GBNF"),
    (lambda: Constraint.json_schema({"type": "strin"}), "Invalid type"),
    (lambda: Constraint.json_schema({"type": "object", "propertyNames": {"maxLength": 3}}), "propertyNames"),
    (lambda: Constraint.json_schema('{"type": '), "not JSON"),
    (lambda: Constraint.regex("[^\\x00-\\x{10FFFF}]"), "no text"),
    (lambda: Constraint.json_schema({"type": "string", "minLength": 5, "maxLength": 2}), "JSON schema"),
    (lambda: Constraint.json_schema({"enum": ["x" * 70_000]}), "over 64 KB"),
    (lambda: Constraint.json_schema(_nested(1000)), "nests deeper"),
    (lambda: Constraint.choice([]), "non-empty"),
])
def test_bad_constraints_say_why(constraint, reason):
    with pytest.raises(MixerError, match=re.escape(reason)) as e:
        constraint().compile()
    assert "\n" not in str(e.value)


def _nested(depth: int) -> dict:
    schema = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


# --- mixer-run -------------------------------------------------------------------------------------
def _mixer_run(bundled, *args):
    return subprocess.run([sys.executable, "-m", "micromixer_edge.runtime", str(bundled["int8"]), *args],
                          capture_output=True, text=True, timeout=120)


def test_mixer_run_flags(bundled, tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "age": {
        "type": "integer", "minimum": 1, "maximum": 99}}, "required": ["name", "age"], "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    (tmp_path / "g.lark").write_text(LARK)
    (tmp_path / "g.gbnf").write_text(LIST)
    for args, check in [
            (["--json-schema", str(tmp_path / "s.json")], lambda t: jsonschema.validate(json.loads(t), schema) or True),
            (["--regex", "[0-9]{4}-[0-9]{2}"], lambda t: re.fullmatch("[0-9]{4}-[0-9]{2}", t)),
            (["--choice", "yes", "--choice", "no"], lambda t: t in ("yes", "no")),
            (["--grammar", str(tmp_path / "g.lark")], lambda t: re.fullmatch(r"(Hello|Hi) [A-Z][a-z]{1,7}!", t)),
            (["--grammar", str(tmp_path / "g.gbnf")], _word_list)]:
        done = _mixer_run(bundled, "-p", "Once upon a time", "-t", "0.8", "--seed", "3", "-n", "400", *args)
        assert done.returncode == 0 and check(done.stdout.rstrip("\n")), (args, done.stdout, done.stderr)
    two = _mixer_run(bundled, "-p", "x", "--regex", "a", "--choice", "b")
    assert two.returncode == 2 and "give one structured-output flag" in two.stderr
    (tmp_path / "ctl.gbnf").write_text('root ::= "a" "\\x01" "b"')  # (byte 1: the model cannot write it)
    failed = _mixer_run(bundled, "-p", "x", "--grammar", str(tmp_path / "ctl.gbnf"))
    assert failed.returncode == 1 and failed.stdout == "a\n" and "bytes 0-2" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    empty = _mixer_run(bundled, "-p", "x", "--regex", "", "--choice", "b")
    assert empty.returncode == 2 and "give one structured-output flag" in empty.stderr
    bad = _mixer_run(bundled, "-p", "x", "--regex", "[a-")
    assert bad.returncode == 1 and "unclosed character class" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --- schemas users send (an outsider's findings): each completes and validates -------------------
@pytest.mark.parametrize("schema", [
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
               {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
    {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}, "required": ["mail"]},
    {"type": "string", "pattern": "ab"},
    {"type": "integer", "minimum": 5 * 10**15},
    {"type": "number", "maximum": -2e15},
    {"type": "object", "patternProperties": {"^x[0-9]$": {"type": "integer"}}},
])
def test_schemas_users_send_complete_and_validate(bundled, schema):
    jobs = [(p, _options(Constraint.json_schema(schema), seed)) for seed in range(2) for p in PROMPTS]
    for text, finish in _run(_model(bundled), jobs):
        assert finish == "stop", (schema, text)
        jsonschema.validate(json.loads(text), schema)


def test_a_choice_of_thousands(bundled):
    choices = [f"word{i}" for i in range(2500)]
    for text, finish in _run(_model(bundled), [(p, _options(Constraint.choice(choices), s)) for s, p in enumerate(PROMPTS)]):
        assert finish == "stop" and text in choices


def test_constraints_that_fail_while_generating_end_their_row_alone(bundled):
    """A grammar that forces a byte the model cannot write (0-2), and one with no end: the row
    ends with finish 'constraint' (or 'length'), never an engine error; a plain row beside them
    keeps its bytes."""
    plain = (PROMPTS[0], GenerateOptions.of(max_new_tokens=100, seed=3))
    jobs = [(PROMPTS[1], _options(Constraint.regex("a\u0000b"), 1, n=50)),
            (PROMPTS[2], _options(Constraint.grammar('root ::= "(" root ")"'), 1, n=50)), plain]
    (_, first), (text, second), alone = _run(_model(bundled), jobs)
    assert first == "constraint" and second in ("constraint", "length") and set(text) <= {"("}
    assert alone == _run(_model(bundled), [plain])[0]


def test_integers_past_2_to_the_53_are_refused():
    for schema in ({"const": 12345678901234567890}, {"type": "integer", "minimum": 1e19},
                   {"enum": [1, 2 ** 60]}):
        with pytest.raises(MixerError, match="beyond 2\\^53"):
            Constraint.json_schema(schema).compile()


def test_a_fork_of_a_constrained_row_goes_on_from_its_place(bundled):
    """Forked mid-text (greedy), the fork gives what the row itself gives."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
              "age": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["name", "age"]}
    for cut in (1, 5, 12):
        engine = Engine(_model(bundled))
        row = engine.add("Tom is", _options(Constraint.json_schema(schema), 0, temperature=0))
        for _ in range(cut):
            engine.step()
        fork = engine.fork(row)
        out = {row.id: row.take_text(), fork.id: ""}
        for r, piece in engine.run():
            out[r.id] += piece
        assert out[row.id].endswith(out[fork.id]) and out[fork.id]
        jsonschema.validate(json.loads(out[row.id]), schema)


def test_with_ignore_eos_a_complete_text_ends_the_row(bundled):
    for pattern in ("", "ab", "[0-9]{3}"):
        text, finish = _run(_model(bundled), [("x", _options(Constraint.regex(pattern), 1, ignore_eos=True))])[0]
        assert finish == "stop" and re.fullmatch(pattern, text)


def test_a_mask_that_grows_too_slow_ends_its_row(bundled):
    """An ambiguous grammar's mask costs more with each byte; past MASK_SECONDS the row ends
    with 'constraint' and the rows beside it go on."""
    slow = Constraint.grammar('start: e\ne: e e | "a" | "a" "a" | e "b" e', "lark")
    plain = ("Once", GenerateOptions.of(max_new_tokens=50, seed=1))
    engine = Engine(_model(bundled), mask_seconds=0.002)
    rows = [engine.add("x", _options(slow, 1, temperature=0, logit_bias={ord("a"): 50}, n=4000)), engine.add(*plain)]
    out = {r.id: "" for r in rows}
    for r, piece in engine.run():
        out[r.id] += piece
    (text, finish), alone = [(out[r.id], r.finish_reason) for r in rows]
    assert finish == "constraint" and 100 < len(text) < 4000
    assert alone == _run(_model(bundled), [plain])[0]


@pytest.mark.parametrize("schema", [{"type": "string", "pattern": "^a{70,}$"},
                                    {"type": "string", "pattern": "^(abcd){30}x*$"},
                                    {"type": "object", "minProperties": 10}])
def test_the_added_bounds_leave_room_for_what_the_schema_needs(bundled, schema):
    text, finish = _run(_model(bundled), [("x", _options(Constraint.json_schema(schema), 2, n=3000))])[0]
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)
