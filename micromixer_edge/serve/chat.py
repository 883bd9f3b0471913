"""Chat messages -> one prompt, through a Jinja template (as llama.cpp and vLLM take one), rendered
in Jinja's sandbox: a template cannot reach Python objects it was not given.

The default suits a base byte-level story model, which has no notion of turns: the messages'
texts in order, a blank line between them, and the reply continues the last one. A system
message is accepted and placed first like any other. `--chat-template FILE` replaces it; the
template sees what Hugging Face's and vLLM's chat templates are written against: `messages` (a
list of {role, content}, content as text), `add_generation_prompt` (true), `bos_token` (empty:
the server puts bos before every prompt itself), `eos_token` (the end-of-story byte, "\x02") and
`raise_exception(message)` (the request's 400).
"""
from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import BadRequest, MixerError
from ..format import EOS_ID

DEFAULT_TEMPLATE = "{% for m in messages %}{{ m.content }}{% if not loop.last %}\n\n{% endif %}{% endfor %}"


class TemplateRefused(Exception):
    """A template's raise_exception(message): its message is the request's 400."""


def _raise(message):
    raise TemplateRefused(message)


GLOBALS = {"add_generation_prompt": True, "bos_token": "", "eos_token": chr(EOS_ID), "raise_exception": _raise}


class ChatTemplate:
    def __init__(self, source: str = DEFAULT_TEMPLATE, name: str = "the default chat template"):
        env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
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
