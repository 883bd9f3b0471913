"""Structured output: a constraint (JSON schema, JSON object, regex, choice, GBNF or Lark grammar)
as a mask over the 256 byte ids, exact at the byte level.

Every token of this model is one byte, so a constraint is a set of allowed bytes at each step,
with none of the token-boundary problems of subword vocabularies. The masks come from llguidance
(the `structured` extra; Rust, no runtime dependencies, aarch64 wheels; the engine behind
onnxruntime-genai's and vLLM's constrained decoding): it compiles all six kinds, computes a mask
in a few µs, and tells which bytes are forced (`Matcher.forced`), which the engine folds without
sampling. Its compile and first masks release the GIL (a server compiles off its decode thread).

The vocabulary as llguidance sees it: ids 0-2 are pad, bos and eos (special); ids 3-255 are those
bytes. Byte 255 reads as a special-token marker in its tokenizer wrapper, which is harmless here:
0xFF never occurs in UTF-8, and every constraint is over UTF-8 text.

JSON is compact (no whitespace between items), and what a schema leaves unbounded is bounded
here (`bounded`), so that a weak model cannot loop on blanks, digits, story text or new keys until
max_tokens: a number gets at most 15 integer digits and 6 decimals (no exponent); a free string
(no maxLength: a format, a pattern that is unanchored or repeats without a bound) at most 64
characters; an array at most 16 items (or its minItems); an object that does not close itself
(additionalProperties absent or true) holds only the keys it lists, or with none listed at most 6
keys that are names of at most 32 characters (`KEY`), whose values nest at most 2 deep. These only
narrow: whatever is generated still validates against the schema as given. Integers beyond 2^53
are refused: llguidance reads a schema's numbers as doubles, and would write other digits.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import time

import numpy as np

from ..errors import ConstraintError, MixerError
from ..format import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar", "lark")  # grammar: GBNF or Lark
MAX_SOURCE_BYTES = 64 * 1024     # a constraint's text (schema, regex, grammar): larger is refused
MAX_DEPTH = 128                  # a JSON schema's nesting, in JSON levels (a schema level is two)
SAFE_INTEGER = 2 ** 53           # integers in a schema beyond this are refused
MAX_FORCED = 4096                # forced bytes taken at once (a grammar with no end forces them forever)
BIG = 10 ** 15 - 1               # unbounded integers: at most 15 digits
STEP = 1e-6                      # unbounded numbers: at most 6 decimals (a multipleOf)
MAX_STRING = 64                  # free strings: at most this many characters
MAX_ITEMS = 16                   # arrays without maxItems: at most this many (or minItems)
KEY = "^[A-Za-z_][A-Za-z0-9_]{0,31}$"  # the keys of an object that lists no properties
COMPACT = {"whitespace_flexible": False}  # llguidance's JSON options: '{"a":1,"b":[2,3]}'

# llguidance's lexer fuel per step bounds what one mask may cost (a hostile grammar fails there,
# as a 400 when it fails while compiling or on its first masks, else as that row's error)
LIMITS = dict(step_lexer_fuel=200_000, initial_lexer_fuel=1_000_000, max_grammar_size=500_000,
              max_lexer_states=100_000, max_items_in_row=5_000)  # (llguidance's 2,000 would fail a choice of 2,001)
HINT = "install the structured extra: pip install 'micromixer-edge[structured]'"

MAX_KEYS = 6                     # ... and at most this many of them
ANY_DEPTH = 2                    # free values (json_object's, an object's that lists no properties) nest this deep


def _any(depth: int = ANY_DEPTH) -> dict:
    """$defs for any JSON value with numbers, strings, arrays and objects bounded as above,
    nesting at most `depth` arrays or objects: "mixer_any" is the top, "mixer_any_0" scalars only."""
    scalars = [{"type": "null"}, {"type": "boolean"}, {"type": "integer", "minimum": -BIG, "maximum": BIG},
               {"type": "number", "minimum": -BIG, "maximum": BIG, "multipleOf": STEP},
               {"type": "string", "maxLength": MAX_STRING}]
    defs = {"mixer_any_0": {"anyOf": scalars}}
    for level in range(1, depth + 1):
        inner = {"$ref": f"#/$defs/mixer_any_{level - 1}"}
        defs[f"mixer_any_{level}"] = {"anyOf": scalars + [
            {"type": "array", "items": inner, "maxItems": MAX_ITEMS},
            {"type": "object", "patternProperties": {KEY: inner}, "additionalProperties": False,
             "maxProperties": MAX_KEYS}]}
    defs["mixer_any"] = {"$ref": f"#/$defs/mixer_any_{depth}"}
    return defs


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What a row's bytes must form. `kind` is one of KINDS; `source` the schema (JSON text), the
    regex, the choices (a JSON list of strings) or the grammar text. Build one with the class
    methods; `compile()` checks it (MixerError naming the reason) and keeps the result."""
    kind: str
    source: str
    _compiled: list = dataclasses.field(default_factory=list, compare=False, repr=False)  # [template matcher]

    @classmethod
    def json_schema(cls, schema: dict | str) -> "Constraint":
        try:
            text = schema if isinstance(schema, str) else json.dumps(schema)
        except (ValueError, RecursionError):  # (a circular or too deep object)
            raise MixerError(f"the JSON schema nests deeper than {MAX_DEPTH}") from None
        return cls("json_schema", text)

    @classmethod
    def json_object(cls) -> "Constraint":
        return cls("json_object", "")

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices) -> "Constraint":
        return cls("choice", json.dumps(list(choices)))

    @classmethod
    def grammar(cls, text: str, syntax: str = "grammar") -> "Constraint":
        """A grammar: GBNF or Lark (syntax "grammar": told apart by llguidance), or "lark"."""
        if syntax not in ("grammar", "gbnf", "lark"):
            raise MixerError("a grammar's syntax must be gbnf or lark")
        return cls("lark" if syntax == "lark" else "grammar", text)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MixerError(f"constraint kind must be one of {', '.join(KINDS)}")
        if len(self.source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
            raise MixerError(f"the {_what(self.kind)} is over {MAX_SOURCE_BYTES // 1024} KB")

    def compile(self) -> None:
        """Check the constraint and build its matcher, with its first mask (the costly part:
        a server calls this off its decode thread). MixerError says what is wrong and where."""
        if self._compiled:
            return
        with _LOCK:
            cached = _COMPILED.get((self.kind, self.source))
        if cached is not None:  # (a client sends the same schema with every request)
            self._compiled.append(cached)
            return
        llg, tokenizer = _llguidance()
        grammar = self._grammar(llg)
        try:
            limits = llg.LLParserLimits(**LIMITS)
            message = llg.LLMatcher.validate_grammar(grammar, tokenizer, limits=limits)
            matcher = None if message else llg.LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        except Exception as e:  # noqa: BLE001 - whatever llguidance raises, the request's fault
            message = str(e) or type(e).__name__
        if message:
            raise MixerError(f"invalid {_what(self.kind)}: {_first_lines(message)}")
        try:
            _check(matcher, self.kind)
        except MixerError as e:  # (llguidance's word for a language with no text in it)
            raise MixerError(f"the {_what(self.kind)} allows no text at all" if "NoExtension" in str(e)
                             else str(e)) from None
        self._compiled.append(matcher)
        with _LOCK:
            _COMPILED[(self.kind, self.source)] = matcher
            while len(_COMPILED) > CACHED:
                del _COMPILED[next(iter(_COMPILED))]

    def matcher(self) -> "Matcher":
        """A fresh matcher for one row (compiled first if it was not)."""
        self.compile()
        return Matcher(self._compiled[0].deep_copy(), self.kind)

    def _grammar(self, llg) -> str:
        """The llguidance grammar of this constraint (MixerError if the source is malformed)."""
        try:
            if self.kind == "json_schema":
                return llg.grammar_from("json_schema", json.dumps(bounded(_schema(self.source))))
            if self.kind == "json_object":
                return llg.grammar_from("json_schema", json.dumps(bounded({"type": "object"})))
            if self.kind == "choice":
                return llg.grammar_from("lark", "start: " + " | ".join(_lark_string(c) for c in _choices(self.source)))
            return llg.grammar_from("gbnf" if self.kind == "grammar" else self.kind, self.source)
        except MixerError:
            raise
        except Exception as e:  # noqa: BLE001 - llguidance's GBNF converter raises plain exceptions
            raise MixerError(f"invalid {_what(self.kind)}: {_first_lines(str(e))}") from None


class Matcher:
    """One row's place in its constraint: which bytes may come next, which are forced."""

    def __init__(self, matcher, kind: str):
        self._m, self.kind = matcher, kind

    def allowed(self, limit: float | None = None) -> np.ndarray:
        """(256,) bool: the bytes the constraint allows next; eos where it accepts. A mask that
        takes over `limit` seconds (an ambiguous grammar's grow with the text) fails the row: a
        server's decode thread computes it, and the other rows wait meanwhile."""
        t0 = time.perf_counter()
        allowed = _check(self._m, self.kind)
        if limit is not None and time.perf_counter() - t0 > limit:
            raise ConstraintError(f"the {_what(self.kind)} took {(time.perf_counter() - t0) * 1e3:.1f} ms to say "
                                  f"which byte may come next (at most {limit * 1e3:g}): simplify it")
        return allowed

    def copy(self) -> "Matcher":
        """This row's place in its constraint, for a fork of it."""
        return Matcher(self._m.deep_copy(), self.kind)

    def forced(self) -> bytes:
        """The bytes the constraint forces next, whatever the model says (maybe none); up to the
        first byte 0-2, which this model cannot write (ids 0-2 are pad, bos and eos)."""
        forced = self._m.compute_ff_bytes()[:MAX_FORCED]
        cut = next((i for i, b in enumerate(forced) if b < 3), None)
        return forced if cut is None else forced[:cut]

    def consume(self, tokens) -> None:
        """The row took these ids (bytes, or eos)."""
        if not self._m.consume_tokens(list(tokens)):
            raise ConstraintError(f"the constraint refused a byte: {_first_lines(self._m.get_error())}")

    @property
    def stopped(self) -> bool:
        """Nothing more may follow (the text is complete); ConstraintError if it failed."""
        if self._m.is_error():
            raise ConstraintError(f"the {_what(self.kind)} failed: {_first_lines(self._m.get_error())}")
        return self._m.is_stopped()


def _check(matcher, kind: str) -> np.ndarray:
    """The matcher's next mask as (256,) bool; ConstraintError if it failed (a parser limit, a
    recursion without end) or allows nothing this model can write (only bytes 0-2)."""
    mask = matcher.compute_bitmask()
    if matcher.is_error():
        raise ConstraintError(f"the {_what(kind)} failed: {_first_lines(matcher.get_error())}")
    allowed = np.unpackbits(np.frombuffer(mask, np.uint8, count=VOCAB_SIZE // 8), bitorder="little").view(bool)
    allowed &= _SAMPLED
    if not allowed.any():
        raise ConstraintError(f"the {_what(kind)} allows no byte this model can write next (only bytes 0-2, "
                              f"or none)")
    return allowed


_SAMPLED = np.ones(VOCAB_SIZE, bool)  # what a mask may allow: not pad, bos, or 255 (the wrapper's special marker, never UTF-8)
_SAMPLED[[PAD_ID, BOS_ID, 255]] = False


def bounded(schema):
    """A JSON schema (changed in place, and returned) with compact separators and every unbounded
    number bounded (see the module doc); objects that do not say what else they hold may hold
    bounded values."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    _bound(schema, 0)
    defs = schema.setdefault("$defs", {})
    if not isinstance(defs, dict):
        raise MixerError("invalid JSON schema: $defs must be an object")
    defs.update(_any())
    schema["x-guidance"] = COMPACT
    return schema


def _bound(node, depth: int, in_all_of: bool = False) -> None:
    """Bound one schema node (see the module doc) and its children. The branches of an allOf are
    not closed: each would refuse the keys the others add."""
    if depth > MAX_DEPTH:
        raise MixerError(f"the JSON schema nests deeper than {MAX_DEPTH} levels of JSON")
    if isinstance(node, list):
        for item in node:
            _bound(item, depth + 1, in_all_of)
        return
    if not isinstance(node, dict):
        return
    _check_integers(node)
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if "integer" in types or "number" in types:
        _bound_number(node, "number" in types)
    if "string" in types and not {"maxLength", "enum", "const"} & node.keys():
        _bound_string(node)
    if "array" in types and "maxItems" not in node:
        low = node.get("minItems")
        node["maxItems"] = max(MAX_ITEMS, low if isinstance(low, int) and not isinstance(low, bool) else 0)
    if ("object" in types or types == [None] and "properties" in node) and not in_all_of:
        _close(node)
    elif isinstance(node.get("allOf"), list) and not in_all_of:
        _close_all_of(node)
    for key, value in node.items():
        if key not in ("enum", "const", "default", "examples", "x-guidance"):
            _bound(value, depth + 1, key == "allOf")


def _check_integers(node: dict) -> None:
    """Numbers past 2^53 in a schema: llguidance reads them as doubles (other digits)."""
    values = [node.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "const",
                                     "multipleOf")]
    values += node["enum"] if isinstance(node.get("enum"), list) else []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > SAFE_INTEGER:
            raise MixerError(f"numbers beyond 2^53 (here {v:g}) are not supported in a JSON schema")


def _bound_number(node: dict, fractional: bool) -> None:
    """At most 15 digits past the bound the schema gives, if it gives one; 6 decimals."""
    def given(*keys):
        return next((node[k] for k in keys if isinstance(node.get(k), (int, float)) and not isinstance(node[k], bool)),
                    None)
    low, high = given("minimum", "exclusiveMinimum"), given("maximum", "exclusiveMaximum")
    if "minimum" not in node and "exclusiveMinimum" not in node:
        node["minimum"] = -BIG if high is None or high > -BIG else high - BIG
    if "maximum" not in node and "exclusiveMaximum" not in node:
        node["maximum"] = BIG if low is None or low < BIG else low + BIG
    if fractional and "multipleOf" not in node:
        node["multipleOf"] = STEP


def _bound_string(node: dict) -> None:
    """A free string at most MAX_STRING characters, more if its minLength or its pattern's counted
    parts need more. A pattern anchored at both ends without an unbounded part (*, +, {n,})
    bounds it already; an unanchored one may have anything around it (JSON schema's search)."""
    pattern = node.get("pattern") if isinstance(node.get("pattern"), str) else None
    if pattern is not None and pattern.startswith("^") and pattern.endswith("$") and \
            not re.search(r"[*+]|\{\d*,\}", pattern):
        return
    least = node.get("minLength") if isinstance(node.get("minLength"), int) else 0
    counts = [int(n) for pair in re.findall(r"\{(\d+)(?:,(\d*))?\}", pattern or "") for n in pair if n]
    needs = 8 * (len(pattern) + sum(counts)) if pattern else 0  # (room for what the pattern itself needs)
    node["maxLength"] = MAX_STRING + max(least, needs)


def _close(node: dict) -> None:
    """An object that does not close itself (additionalProperties absent or true): only the keys
    it lists (a required key it does not list is listed, with a bounded value), or with none
    listed, names (KEY) with bounded values, at most MAX_KEYS of them. One with its own
    additionalProperties schema keeps it (its values are bounded where that schema is)."""
    if node.get("additionalProperties", True) is not True:
        return
    listed = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    required = node.get("required") if isinstance(node.get("required"), list) else []
    for name in required:
        if isinstance(name, str) and name not in listed:
            listed[name] = {"$ref": "#/$defs/mixer_any"}
            node["properties"] = listed
    if not listed and "patternProperties" not in node:
        node["patternProperties"] = {KEY: {"$ref": "#/$defs/mixer_any"}}
    node["additionalProperties"] = False
    if "patternProperties" in node:
        least = node.get("minProperties") if isinstance(node.get("minProperties"), int) else 0
        node.setdefault("maxProperties", max(MAX_KEYS, len(required), least))


def _close_all_of(node: dict) -> None:
    """allOf of objects whose branches do not close themselves: the parent lists every key the
    branches list (any value: the branches say which) and closes; its branches stay open."""
    branches = [b for b in node["allOf"] if isinstance(b, dict)]
    if node.get("additionalProperties", True) is not True or not any(
            "properties" in b or b.get("type") == "object" for b in branches):
        return
    if any(b.get("additionalProperties", True) is not True or "patternProperties" in b for b in branches):
        return
    names = [n for b in branches for n in list(b.get("properties") or {}) + list(b.get("required") or [])]
    listed = node.setdefault("properties", {})
    if not isinstance(listed, dict):
        return
    for name in names:
        if isinstance(name, str):
            listed.setdefault(name, True)
    node["additionalProperties"] = False


def _schema(source: str):
    try:
        schema = json.loads(source)
    except (ValueError, RecursionError):
        raise MixerError("invalid JSON schema: it is not JSON") from None
    if not isinstance(schema, (dict, bool)):
        raise MixerError("invalid JSON schema: it must be an object (or true)")
    return schema


def _choices(source: str) -> list[str]:
    choices = json.loads(source)
    if not (isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)):
        raise MixerError("choice needs a non-empty list of non-empty strings")
    return choices


def _lark_string(text: str) -> str:
    """A Lark string literal of text (JSON's escapes are Lark's)."""
    return json.dumps(text)


def _what(kind: str) -> str:
    return {"json_schema": "JSON schema", "json_object": "JSON object", "regex": "regex", "choice": "choice",
            "grammar": "grammar (GBNF or Lark)", "lark": "Lark grammar"}[kind]


def _first_lines(message: str, lines: int = 6) -> str:
    """An llguidance message on one line: its first lines, without the echo of the Lark it made
    ("   1 | start: ..." and the caret under it)."""
    kept, echo = [], False
    for line in message.strip().splitlines():
        echo = bool(re.match(r"\s*\d+ \|", line)) or echo and set(line.strip()) <= {"^"}
        if line.strip() and not echo:
            kept.append(line.rstrip())
    return " | ".join(kept[:lines])


# the last CACHED compiled constraints by (kind, source): their template matchers, which are only
# deep-copied once compiled (a copy per row), so threads may share them
CACHED = 32
_COMPILED: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()
_LLG = []


def _llguidance():
    """(the llguidance module, this vocabulary as its tokenizer), imported once."""
    if not _LLG:
        try:
            import llguidance
        except ImportError:
            raise MixerError(f"structured output needs llguidance: {HINT}") from None
        _LLG.append((llguidance, llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))))
    return _LLG[0]


class _Bytes:
    """This model's vocabulary in the shape llguidance's TokenizerWrapper reads."""
    eos_token_id, bos_token_id = EOS_ID, BOS_ID
    tokens = [b"\xff[pad]", b"\xff[bos]", b"\xff[eos]"] + [bytes([b]) for b in range(3, VOCAB_SIZE)]
    special_token_ids = [PAD_ID, BOS_ID, EOS_ID]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)
