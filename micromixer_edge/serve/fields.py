"""The request fields of /v1/completions, each defined once: its JSON types, its bounds, and the
GenerateOptions keyword it sets (llama-cpp-python's server/types.py plays this part there).

Null means absent for every optional field (the openai client sends `"max_tokens": null` for
max_tokens=None). OpenAI fields this server does not implement are refused with a 400 naming the
field, unless they carry the value that means "off" (`"echo": false`, `"presence_penalty": 0`),
which changes nothing. Unknown fields are ignored, as OpenAI-compatible servers do.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any, Callable

from ..errors import MixerError, BadRequest
from ..codec import utf8
from ..runtime.constraint import Constraint
from ..runtime.context import CONTEXT_MODES
from ..runtime.engine import GenerateOptions
from ..runtime.sampling import LOGIT_BIAS, SamplingParams
from ..runtime.logprobs import MAX_LOGPROBS
from .answer import answer_bytes
from .settings import (DEFAULT_MAX_TOKENS, MAX_COMPLETION_LOGPROBS, MAX_STOP_STRINGS, MAX_WINDOW_SCORED_BYTES,
                       Settings)

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _logit_bias(v) -> tuple | None:
    """OpenAI's {"token id": bias} -> ((byte, bias), ...) sorted, or None if it is not one."""
    if not isinstance(v, dict):
        return None
    out = []
    for k, b in v.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and int(k) < 256 and LOGIT_BIAS.holds(b)):
            return None
        out.append((int(k), float(b)))
    return tuple(sorted(out))


def _stop(v) -> bool:
    stops = [v] if isinstance(v, str) else v
    return (isinstance(stops, list) and len(stops) <= MAX_STOP_STRINGS
            and all(isinstance(s, str) and s for s in stops))


@dataclasses.dataclass(frozen=True)
class Field:
    name: str                                  # the JSON field
    valid: Callable[[Any, Settings], bool]     # type and bounds
    what: Callable[[Settings], str]            # "must be ..." in the 400 message
    option: str | None = None                  # the GenerateOptions.of keyword it sets
    only: str | None = None                    # "text" (/v1/completions) or "chat"; None: both


def _sampling(name: str, option: str | None = None) -> Field:
    """A sampling field: its bounds are SamplingParams' (runtime/sampling.py), at the server's
    tighter upper bound where there is one."""
    bound = SamplingParams.bound(option or name)
    return Field(name, lambda v, s: bound.holds(v, served=True), lambda s: bound.text(served=True), option or name)


FIELDS = (
    Field("max_tokens", lambda v, s: _integer(v) and 0 <= v <= s.max_tokens_limit,
          lambda s: f"an integer from 0 to {s.max_tokens_limit} (--max-tokens-limit)", "max_new_tokens"),
    # OpenAI's newer name (chat); after max_tokens in this table, so that it wins when both come
    Field("max_completion_tokens", lambda v, s: _integer(v) and 0 <= v <= s.max_tokens_limit,
          lambda s: f"an integer from 0 to {s.max_tokens_limit} (--max-tokens-limit)", "max_new_tokens"),
    _sampling("temperature"), _sampling("top_p"), _sampling("top_k"), _sampling("min_p"),
    _sampling("repeat_penalty", "repetition_penalty"),  # (llama.cpp's name)
    Field("seed", lambda v, s: _integer(v) and -2**63 <= v < 2**63, lambda s: "a 64-bit integer", "seed"),
    Field("stop", lambda v, s: _stop(v), lambda s: f"a non-empty string or a list of at most {MAX_STOP_STRINGS}",
          "stop"),
    Field("ignore_eos", lambda v, s: isinstance(v, bool), lambda s: "true or false", "ignore_eos"),
    _sampling("presence_penalty"), _sampling("frequency_penalty"),
    Field("logit_bias", lambda v, s: _logit_bias(v) is not None,
          lambda s: f'an object of byte ids ("0" to "255") to numbers {LOGIT_BIAS.text()[9:]}', "logit_bias"),
    # /v1/completions: logprobs is how many alternatives; chat: a boolean, and top_logprobs how many
    Field("logprobs", lambda v, s: _integer(v) and 0 <= v <= MAX_COMPLETION_LOGPROBS,
          lambda s: f"an integer from 0 to {MAX_COMPLETION_LOGPROBS}", "logprobs", only="text"),
    Field("echo", lambda v, s: isinstance(v, bool), lambda s: "true or false", only="text"),
    Field("logprobs", lambda v, s: isinstance(v, bool), lambda s: "true or false", only="chat"),
    Field("top_logprobs", lambda v, s: _integer(v) and 0 <= v <= MAX_LOGPROBS,
          lambda s: f"an integer from 0 to {MAX_LOGPROBS}", only="chat"),
    Field("context", lambda v, s: v in CONTEXT_MODES, lambda s: "one of " + ", ".join(CONTEXT_MODES), "context"),
    Field("stream", lambda v, s: isinstance(v, bool), lambda s: "true or false"),
    Field("stream_options", lambda v, s: isinstance(v, dict) and isinstance(v.get("include_usage", False), (bool, type(None))),
          lambda s: 'an object such as {"include_usage": true}'),
    Field("n", lambda v, s: _integer(v) and 1 <= v <= s.max_batch,
          lambda s: f"an integer from 1 to {s.max_batch} (--max-batch)"),
    Field("return_state", lambda v, s: isinstance(v, bool), lambda s: "true or false"),
    Field("state", lambda v, s: isinstance(v, str), lambda s: "a state text (a choice's `state`)"),
    Field("model", lambda v, s: isinstance(v, str), lambda s: "a string"),
    Field("user", lambda v, s: isinstance(v, str), lambda s: "a string"),
)

# OpenAI's fields this server does not implement -> the value that means "off" (accepted): a
# client that needs one gets a 400 that names it, never an answer that silently lacks it
REFUSED = {"best_of": 1, "suffix": "", "tools": [], "functions": []}


# Structured output, in the three dialects clients speak (docs/structured.md); at most one a
# request. Each turns its value into a Constraint or raises MixerError (a 400 naming the field).
def _response_format(v) -> Constraint | None:
    """OpenAI's: {"type": "text"} (none), {"type": "json_object"}, or {"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}} (strict or not, the schema is enforced);
    llama.cpp's {"type": "json_object" or "json_schema", "schema": {...}} too."""
    kind = v.get("type") if isinstance(v, dict) else None
    if kind == "text":
        return None
    if kind in ("json_object", "json_schema") and "schema" in v:  # (llama.cpp's form)
        return _json_schema(v["schema"])
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = v.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
            raise MixerError("json_schema.schema must be a JSON schema (an object)")
        if not isinstance(spec.get("name", ""), str) or not isinstance(spec.get("strict", False), (bool, type(None))):
            raise MixerError("json_schema.name must be a string and json_schema.strict a boolean")
        return Constraint.json_schema(spec["schema"])
    raise MixerError('must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                     '"json_schema": {"name": ..., "schema": {...}}}')


def _structured_outputs(v) -> Constraint:
    """vLLM's: one of {"json": schema}, {"regex": ...}, {"choice": [...]}, {"grammar": ...},
    {"json_object": true}; each key's value as its own field takes it (VLLM_KEYS)."""
    keys = [k for k in VLLM_KEYS if isinstance(v, dict) and k in v]
    if len(keys) != 1:
        raise MixerError("must be an object with exactly one of " + ", ".join(VLLM_KEYS))
    try:
        return VLLM_KEYS[keys[0]](v[keys[0]])
    except MixerError as e:
        raise MixerError(f"{keys[0]} {e}") from None


def _json_object(v) -> Constraint:
    if v is not True:
        raise MixerError("must be true")
    return Constraint.json_object()


def _grammar(v) -> Constraint:
    """llama.cpp's: a GBNF grammar (Lark is taken too)."""
    if not isinstance(v, str):
        raise MixerError("must be a grammar (GBNF or Lark, a string)")
    return Constraint.grammar(v)


def _json_schema(v) -> Constraint:
    """llama.cpp's: a JSON schema (vLLM's older guided_json: also as JSON text)."""
    if not isinstance(v, (dict, bool, str)):
        raise MixerError("must be a JSON schema (an object)")
    return Constraint.json_schema(v)


def _regex(v) -> Constraint:
    if not isinstance(v, str):
        raise MixerError("must be a regular expression (a string)")
    return Constraint.regex(v)


def _choice(v) -> Constraint:
    if not (isinstance(v, list) and v and all(isinstance(c, str) and c for c in v)):
        raise MixerError("must be a non-empty list of non-empty strings")
    return Constraint.choice(v)


STATE_TEXT_BYTES = 16 * 1024  # what a choice's `state` adds to its answer, at most (a model larger than the 1m: more)


# vLLM's structured_outputs keys (looked up when a request comes)
VLLM_KEYS = {"json": _json_schema, "regex": _regex, "choice": _choice, "grammar": _grammar, "json_object": _json_object}
# the field -> its constraint; vLLM's older guided_* fields are its structured_outputs' keys alone
STRUCTURED = {"response_format": _response_format, "structured_outputs": _structured_outputs,
              "grammar": _grammar, "json_schema": _json_schema, "guided_json": _json_schema,
              "guided_regex": _regex, "guided_choice": _choice, "guided_grammar": _grammar}


def _given(req: dict) -> list[str]:
    return [name for name in STRUCTURED if req.get(name) is not None and req[name] != {"type": "text"}]


def _constraint(req: dict) -> Constraint | None:
    """The request's constraint: at most one of STRUCTURED may be given (response_format
    {"type": "text"} counts as not given)."""
    given = _given(req)
    if len(given) > 1:
        raise BadRequest(400, f"give one of {', '.join(STRUCTURED)}, not {' and '.join(given)}", given[1])
    if not given:
        return None
    try:
        return STRUCTURED[given[0]](req[given[0]])
    except MixerError as e:
        raise BadRequest(400, f"{given[0]}: {e}", given[0]) from None


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    prompts: tuple            # each a str, or bytes (a prompt given as token ids)
    options: GenerateOptions
    stream: bool = False
    include_usage: bool = False
    n: int = 1                # choices per prompt
    echo: bool = False        # each choice's text begins with its prompt
    answer_bytes: int = 0     # the most JSON its answer can hold (serve/answer.py)
    constrained_by: str | None = None  # the STRUCTURED field that gave options.constraint
    state: str | None = None  # the state text its prompt (or chat messages) continue
    return_state: bool = False  # each choice carries its state at its end
    asked_context: str | None = None  # the context mode the request named (a state's own wins, or a 400)
    chat: bool = False        # /v1/chat/completions (its states are signed with the template's hash)

    def prompt_text(self, index: int) -> str:
        """What choice `index` echoes before its text ("" without echo)."""
        prompt = self.prompts[index // self.n]
        if not self.echo:
            return ""
        return prompt if isinstance(prompt, str) else prompt.decode("utf-8", "replace")

    def choices(self) -> list[tuple[str | bytes, list[GenerateOptions]]]:
        """(prompt, the options of its n choices) per prompt. Choice i of the request (prompt p,
        choice j: i = p * n + j, OpenAI's order) samples with seed + i, so that with a seed each
        choice is the same whatever else runs; without one, each draws its own seed (else the n
        rows forked from one state would draw the same bytes)."""
        count, seed = len(self.prompts) * self.n, self.options.seed
        if seed is None and count > 1:
            seed = random.SystemRandom().getrandbits(62)
        seeds = [None] * count if seed is None else [seed + i for i in range(count)]
        return [(prompt, [dataclasses.replace(self.options, seed=seeds[p * self.n + j]) for j in range(self.n)])
                for p, prompt in enumerate(self.prompts)]


def _neutral(value, off) -> bool:
    if isinstance(off, bool) or isinstance(value, bool):
        return value is off
    return value == off and (_number(value) if _number(off) else type(value) is type(off))


def parse_completion(body: bytes, settings: Settings) -> CompletionRequest:
    """A /v1/completions body -> the request; BadRequest (400 or 413) for anything else."""
    req = _json_object(body)
    return _request(req, _prompts(req.get("prompt")), settings, "text")


def _prompts(prompt) -> list[str | bytes]:
    """OpenAI's four forms: a string, a list of strings, a list of token ids, a list of lists of
    token ids. Tokens are bytes here (0-255), and a prompt of ids is those bytes (bos is added,
    as for text)."""
    def ids(v) -> bool:
        return isinstance(v, list) and all(_integer(t) and 0 <= t <= 255 for t in v)
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and ids(prompt):
        return [bytes(prompt)]
    if isinstance(prompt, list) and prompt and all(ids(p) for p in prompt):
        return [bytes(p) for p in prompt]
    if prompt is None:
        raise BadRequest(400, "prompt is required: a string, a list of strings, a list of token ids (0-255) "
                              "or a list of such lists", "prompt")
    raise BadRequest(400, "prompt must be a string, a list of strings, a list of token ids (0-255) or a "
                          "list of such lists", "prompt")


CHAT_ROLES = ("system", "developer", "user", "assistant")


def parse_chat(body: bytes, settings: Settings, render) -> CompletionRequest:
    """A /v1/chat/completions body -> the request, its prompt the messages through `render`
    (serve/chat.py; the server renders off the event loop, between chat_messages and chat_request)."""
    req, messages = chat_messages(body)
    return chat_request(req, render(messages), settings)


def chat_messages(body: bytes) -> tuple[dict, list[dict]]:
    """A /v1/chat/completions body -> (its fields, its messages as {role, content: text})."""
    req = _json_object(body)
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list of {role, content}", "messages")
    return req, [_message(m) for m in messages]


def chat_request(req: dict, prompt: str, settings: Settings) -> CompletionRequest:
    """The chat request around its rendered prompt; the other fields are the completions' (with
    max_completion_tokens, OpenAI's newer name for max_tokens)."""
    return _request(req, [prompt], settings, "chat")


def _message(m) -> dict:
    """{role, content}: content a string or a list of text parts, as OpenAI's clients send it."""
    if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
        raise BadRequest(400, "each message needs a role: one of " + ", ".join(CHAT_ROLES), "messages")
    content = m.get("content")
    if content is None and m["role"] == "assistant":  # (OpenAI's for an assistant turn that called tools)
        content = ""
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(400, "a message's content must be text (a string or text parts)", "messages")
    _text(content, "messages")
    return {"role": m["role"], "content": content}


def parse_tokenize(body: bytes) -> str | list[dict]:
    """A /tokenize body (vLLM's): {"prompt": text} -> the text, or {"messages": [...]} -> the
    messages, for the chat template (then `tokens`)."""
    req = _json_object(body)
    if "messages" in req and req.get("prompt") is None:
        return chat_messages(body)[1]
    if isinstance(req.get("prompt"), str):
        return req["prompt"]
    raise BadRequest(400, "prompt must be a string (or give messages)", "prompt")


def tokens(prompt: str, settings: Settings) -> bytes:
    """A prompt's tokens, which are its UTF-8 bytes. `add_special_tokens` changes nothing: every
    prompt gets bos when it is run, so the tokens never list it."""
    data = _text(prompt, "prompt")
    if len(data) > settings.max_prompt_bytes:
        raise BadRequest(413, f"the prompt is over --max-prompt-bytes ({settings.max_prompt_bytes} bytes)", "prompt")
    return data


def parse_detokenize(body: bytes) -> bytes:
    """A /detokenize body: {"tokens": [byte, ...]} -> those bytes."""
    tokens = _json_object(body).get("tokens")
    if not (isinstance(tokens, list) and all(_integer(t) and 0 <= t <= 255 for t in tokens)):
        raise BadRequest(400, "tokens must be a list of token ids (0-255)", "tokens")
    return bytes(tokens)


def _json_object(body: bytes) -> dict:
    try:
        req = json.loads(body)
    except ValueError:  # not JSON, not UTF-8, an integer too long
        raise BadRequest(400, "the request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest(400, "the request body nests too deep to parse") from None
    if not isinstance(req, dict):
        raise BadRequest(400, "the request body must be a JSON object")
    return req


def _request(req: dict, prompts: list[str | bytes], settings: Settings, endpoint: str) -> CompletionRequest:
    """The fields of FIELDS and REFUSED (those of the endpoint, "text" or "chat") around already
    built prompts."""
    sizes = _prompt_sizes(prompts, settings)
    for name, off in REFUSED.items():
        if req.get(name) is not None and not _neutral(req[name], off):
            raise BadRequest(400, f"{name} is not supported by this server", name)
    given = {}
    for field in FIELDS:
        value = req.get(field.name)
        if value is None or field.only not in (None, endpoint):
            continue
        if not field.valid(value, settings):
            raise BadRequest(400, f"{field.name} must be {field.what(settings)}", field.name)
        if field.option is not None:
            given[field.option] = _logit_bias(value) if field.name == "logit_bias" else value
    for s in [given["stop"]] if isinstance(given.get("stop"), str) else given.get("stop", []):
        _text(s, "stop")
    # OpenAI's defaults, not GenerateOptions' own: 16 for completions; chat has no limit of its own
    given.setdefault("max_new_tokens", DEFAULT_MAX_TOKENS if endpoint == "text" else settings.max_tokens_limit)
    echo = endpoint == "text" and req.get("echo") is True
    if endpoint == "chat":
        given["logprobs"] = _chat_logprobs(req)
    given["constraint"] = _constraint(req)
    given["prompt_logprobs"] = echo and given.get("logprobs") is not None
    if given["prompt_logprobs"] and given.get("context") == "window" and \
            sum(sizes) > MAX_WINDOW_SCORED_BYTES:
        raise BadRequest(400, f"echo with logprobs in window mode scores each prompt byte with a call of W "
                              f"bytes: at most {MAX_WINDOW_SCORED_BYTES} prompt bytes a request (halve and "
                              f"unbounded have no such limit)", "echo")
    try:
        options = GenerateOptions.of(**given)
    except MixerError as e:
        raise BadRequest(400, str(e)) from None
    usage = (req.get("stream_options") or {}).get("include_usage") is True
    n, most = req.get("n") or 1, settings.max_batch + settings.max_queue
    if n * len(prompts) > most:  # (the rows of one prompt must fit in a step: n is at most --max-batch)
        raise BadRequest(400, f"n x prompts ({n} x {len(prompts)}) must be at most --max-batch + --max-queue "
                              f"({most})", "prompt" if n == 1 else "n")
    cost = answer_bytes(endpoint, sizes, n, options.max_new_tokens, options.logprobs, echo, options.prompt_logprobs)
    if req.get("return_state") is True:  # (each choice's state: ~5.6 KB of text for the 1m model)
        cost += n * len(prompts) * STATE_TEXT_BYTES
    if cost > settings.max_answer_bytes:
        raise BadRequest(400, _too_big(cost, settings, endpoint, options), _costly_field(endpoint, options, n))
    if req.get("state") is not None and len(prompts) != 1:
        raise BadRequest(400, "a state continues one prompt (n > 1 forks it)", "prompt")
    if req.get("state") is not None and options.prompt_logprobs:
        raise BadRequest(400, "echo with logprobs scores a prompt from its start (bos); a state's prompt goes on "
                              "from the state: leave echo or logprobs out", "echo")
    return CompletionRequest(tuple(prompts), options, req.get("stream") is True, usage, n, echo, cost,
                             _given(req)[0] if options.constraint is not None else None, req.get("state"),
                             req.get("return_state") is True, req.get("context"), endpoint == "chat")


def _costly_field(endpoint: str, options: GenerateOptions, n: int) -> str:
    if options.logprobs is not None:
        return "top_logprobs" if endpoint == "chat" else "logprobs"
    return "max_tokens" if n == 1 else "n"


def _too_big(cost: int, settings: Settings, endpoint: str, options: GenerateOptions) -> str:
    lower = ["max_tokens", "n", "the prompts (with echo)"]
    if options.logprobs is not None:
        lower.insert(0, "top_logprobs (or logprobs: false)" if endpoint == "chat" else "logprobs (or leave it out)")
    return (f"this request's answer could hold {cost / 2**20:.1f} MB of JSON, over --max-answer-mb "
            f"({settings.max_answer_mb:g}); lower " + ", ".join(lower[:-1]) + " or " + lower[-1])


def _prompt_sizes(prompts: list[str | bytes], settings: Settings) -> list[int]:
    """Each prompt's bytes; a 400 for a str that is not Unicode, a 413 past --max-prompt-bytes."""
    sizes = []
    for prompt in prompts:  # (in order: the first prompt at fault names the error)
        sizes.append(len(prompt) if isinstance(prompt, bytes) else len(_text(prompt, "prompt")))
        if sizes[-1] > settings.max_prompt_bytes:
            raise BadRequest(413, f"a prompt is over --max-prompt-bytes ({settings.max_prompt_bytes} bytes)",
                             "prompt")
    return sizes


def _chat_logprobs(req: dict) -> int | None:
    """Chat's pair: `logprobs: true`, then `top_logprobs` alternatives (0 if absent)."""
    top = req.get("top_logprobs")
    if req.get("logprobs") is not True:
        if top is not None:
            raise BadRequest(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return None
    return top or 0


def _text(s: str, name: str) -> bytes:
    try:
        return utf8(s, name)
    except MixerError as e:
        raise BadRequest(400, str(e), name) from None
