"""Chat messages -> one prompt, through a Jinja template (as llama.cpp and vLLM take one), rendered
in Jinja's sandbox: a template cannot reach Python objects it was not given.

The default suits a base byte-level story model, which has no notion of turns: the messages'
texts in order, a blank line between them, and the reply continues the last one. A system
message is accepted and placed first like any other. `--chat-template FILE` replaces it; the
template is rendered as Hugging Face's `apply_chat_template` (and so vLLM) renders one: Jinja's
sandbox with trim_blocks, lstrip_blocks and loop controls, `{% generation %}` blocks kept as they
are, and these variables: `messages` (a list of {role, content}, content as text), `tools` and
`documents` (none), `add_generation_prompt` (true), `bos_token` (empty: the server puts bos before
every prompt itself), `eos_token` (the end-of-story byte, "\x02"), `strftime_now(format)` and
`raise_exception(message)` (the request's 400).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import BadRequest, MixerError
from ..format import EOS_ID

DEFAULT_TEMPLATE = "{% for m in messages %}{{ m.content }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}{% endfor %}"


class TemplateRefused(Exception):
    """A template's raise_exception(message): its message is the request's 400."""


def _raise(message):
    raise TemplateRefused(message)


class _Generation(Extension):
    """HF's `{% generation %}...{% endgeneration %}` (it marks the assistant's text for training
    masks): here its body, as it is."""
    tags = {"generation"}

    def parse(self, parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson: JSON as is (Jinja's own escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


GLOBALS = {"add_generation_prompt": True, "bos_token": "", "eos_token": chr(EOS_ID), "tools": None,
           "documents": None, "raise_exception": _raise,
           "strftime_now": lambda fmt: datetime.datetime.now().strftime(fmt)}


class ChatTemplate:
    def __init__(self, source: str = DEFAULT_TEMPLATE, name: str = "the default chat template"):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise MixerError(f"{name}: not a Jinja template ({e})") from None
        self.name, self.source = name, source

    @classmethod
    def from_file(cls, path: str | None) -> "ChatTemplate":
        if path is None:
            return cls()
        return cls(Path(path).read_text(), str(path))

    def __call__(self, messages: list[dict]) -> str:
        """The prompt for these messages; a template that fails on them is the request's 400."""
        try:
            return self._template.render(messages=messages, **GLOBALS)
        except TemplateRefused as e:
            raise BadRequest(400, f"the chat template refused these messages: {e}", "messages") from None
        except Exception as e:  # noqa: BLE001 - whatever an operator's template raises on these messages
            raise BadRequest(400, f"the chat template failed on these messages ({type(e).__name__}: {e})",
                             "messages") from None
