"""Chat messages -> one prompt, through a Jinja template (as llama.cpp and vLLM take one), rendered
in Jinja's sandbox (a template cannot reach Python objects it was not given) and in a process of
its own, bounded in time, memory and output: an operator's template runs whatever loops it holds,
and Jinja folds constants such as `'a' * 10**9` when it compiles, so neither compiling nor
rendering ever runs in the server's process. A render past --template-seconds is killed and is
that request's 400; a template that does not compile within 10x as long is refused at start.

The default suits a base byte-level story model, which has no notion of turns: the messages'
texts in order, each followed by a blank line, and the reply starts after the last one's (so it
is prefix-stable: `stable`, which states need). A system
message is accepted and placed first like any other. `--chat-template FILE` replaces it; the
template is rendered as Hugging Face's `apply_chat_template` (and so vLLM) renders one: Jinja's
sandbox with trim_blocks, lstrip_blocks and loop controls, `{% generation %}` blocks kept as they
are, and these variables: `messages` (a list of {role, content}, content as text), `tools` and
`documents` (none), `add_generation_prompt` (true), `bos_token` (empty: the server puts bos before
every prompt itself), `eos_token` (the end-of-story byte, "\x02"), `strftime_now(format)` and
`raise_exception(message)` (the request's 400).

Worker protocol (JSON lines on stdin/stdout): it says {"ready": true}; then {"source", "max_chars",
"memory_mb"}, answered {"loaded": true} or {"error": ...}; then {"messages": [...]} per render, answered {"text": ...},
{"refused": ...} (raise_exception) or {"error": ...}.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import BadRequest, MixerError, TemplateRefused
from ..format import EOS_ID

# each message's text and a blank line: the reply starts after one, as it sits in the history
# later (prefix-stable: a conversation carried by states renders as one sent whole)
DEFAULT_TEMPLATE = "{% for m in messages %}{{ m.content }}{{ '\\n\\n' }}{% endfor %}"
MARK = "\ue000mixer-reply\ue001"  # a stand-in reply (private-use characters) that the stability probe finds
PROBE = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there."}]
REPLY = " Hello,\n there. \n"  # the probe's reply: blanks at both ends and inside
LOAD_FACTOR = 10          # compiling may take this many times --template-seconds (at start only)
START_SECONDS = 30        # the worker's own start (Python and Jinja's import: seconds on a small board)
MEMORY_MB = 256           # the worker's address space beyond what it has when it starts


class ChatTemplate:
    """The server's side: a worker process that holds the compiled template, one render at a time."""

    def __init__(self, source: str = DEFAULT_TEMPLATE, name: str = "the default chat template",
                 seconds: float = 1.0, max_chars: int = 1 << 20):
        self.source, self.name, self.seconds, self.max_chars = source, name, seconds, max_chars
        self._lock, self._proc, self._stable = threading.Lock(), None, None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mixer-template")
        with self._lock:
            self._start()  # a template that fails or is too costly to load: refused now, in one line

    @classmethod
    def from_file(cls, path: str | None, seconds: float = 1.0, max_chars: int = 1 << 20) -> "ChatTemplate":
        if path is None:
            return cls(seconds=seconds, max_chars=max_chars)
        return cls(Path(path).read_text(), str(path), seconds, max_chars)

    def __call__(self, messages: list[dict]) -> str:
        """The prompt for these messages; a template that fails on them, or runs past its bounds,
        is the request's 400 (blocking: the server calls `render`)."""
        with self._lock:
            if self._proc is None:
                self._start()
            answer = self._ask({"messages": messages}, self.seconds)
        if answer is None:
            raise BadRequest(400, f"the chat template did not render these messages within "
                                  f"--template-seconds ({self.seconds:g} s) and {MEMORY_MB} MB", "messages")
        if "refused" in answer:
            raise BadRequest(400, f"the chat template refused these messages: {answer['refused']}", "messages")
        if "error" in answer:
            raise BadRequest(400, f"the chat template failed on these messages ({answer['error']})", "messages")
        return answer["text"]

    async def render(self, messages: list[dict]) -> str:
        """As calling it, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self, messages)

    def after_reply(self, messages: list[dict]) -> str:
        """What these messages add to a conversation whose last turn was the model's reply (a
        state carries the rest): the template's rendering after a stand-in reply. Exact for a
        prefix-stable template (`stable`); a 400 naming `state` for another."""
        if not self.stable:
            raise BadRequest(400, f"state: {self.name} is not prefix-stable (a conversation rendered with "
                                  f"its reply and the next message does not begin with it rendered before the "
                                  f"reply), so a state cannot carry a chat; send the messages whole", "state")
        text = self([{"role": "assistant", "content": MARK}, *messages])
        return text[text.index(MARK) + len(MARK):]

    async def continuation(self, messages: list[dict]) -> str:
        """`after_reply`, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.after_reply, messages)

    @property
    def stable(self) -> bool:
        """Whether a conversation rendered for its reply is a prefix of it rendered with the reply
        and the next message, and the rest is what `after_reply` gives: probed at the first chat
        request with a state (on the render thread), with a reply that has blanks around it, as a
        model's may, so that a template that trims or rewrites content is found out. The answer
        is kept, unless the probe ran out of time (asked again next time)."""
        if self._stable is None:
            try:
                before = self(PROBE)
                whole = self([*PROBE, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "Bye."}])
                after = self([{"role": "assistant", "content": MARK}, {"role": "user", "content": "Bye."}])
            except BadRequest as e:  # a template that fails on the probe refuses chat states
                if "did not render" in str(e):
                    return False
                self._stable = False
            else:
                self._stable = MARK in after and whole == before + REPLY + after[after.index(MARK) + len(MARK):]
        return self._stable

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def close(self) -> None:
        self._kill()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self._ask(None, START_SECONDS) is None:
            raise MixerError(f"the chat template's worker process did not start within {START_SECONDS} s")
        answer = self._ask({"source": self.source, "max_chars": self.max_chars, "memory_mb": MEMORY_MB},
                           LOAD_FACTOR * self.seconds)
        if answer is None or "error" in answer:
            self._kill()
            why = answer["error"] if answer else (f"it did not load within {LOAD_FACTOR} x --template-seconds "
                                                  f"({LOAD_FACTOR * self.seconds:g} s) and {MEMORY_MB} MB")
            raise MixerError(f"{self.name}: {why}")

    def _ask(self, message: dict | None, seconds: float) -> dict | None:
        """One request to the worker (None: just its next line); None (and the worker killed) if
        it took longer, or died."""
        proc = self._proc
        try:
            if message is not None:
                proc.stdin.write(json.dumps(message) + "\n")
                proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], seconds)
            line = proc.stdout.readline() if ready else ""
        except (OSError, ValueError):  # the worker died (over its memory), or was killed at shutdown
            line = ""
        if not line:
            self._kill()
            return None
        return json.loads(line)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the worker process (python -m micromixer_edge.serve.chat) ----------------------------------

def _raise(message):
    raise TemplateRefused(message)


def _environment():
    from jinja2 import nodes  # (the serve extra's)
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """HF's `{% generation %}...{% endgeneration %}` (it marks the assistant's text for
        training masks): here its body, as it is."""
        tags = {"generation"}

        def parse(self, parser) -> list[nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    return env


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson: JSON as is (Jinja's own escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


GLOBALS = {"add_generation_prompt": True, "bos_token": "", "eos_token": chr(EOS_ID), "tools": None,
           "documents": None, "raise_exception": _raise,
           "strftime_now": lambda fmt: datetime.datetime.now().strftime(fmt)}


def _limit_memory(mb: int) -> None:
    """The address space this process has now, plus `mb`: past it allocations fail (MemoryError)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (now + mb * 2**20, resource.RLIM_INFINITY))
    except (ImportError, OSError, ValueError):  # not Linux: the time bound still holds
        pass


def _render(template, messages: list[dict], max_chars: int) -> dict:
    out, size = [], 0
    try:
        for piece in template.generate(messages=messages, **GLOBALS):
            out.append(piece)
            size += len(piece)
            if size > max_chars:
                return {"error": f"its output is over {max_chars} characters (--max-prompt-bytes)"}
    except TemplateRefused as e:
        return {"refused": str(e)}
    except Exception as e:  # noqa: BLE001 - whatever an operator's template raises on these messages
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return {"text": "".join(out)}


def _serve() -> None:
    def send(doc):
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    send({"ready": True})
    setup = json.loads(sys.stdin.readline())
    _limit_memory(setup["memory_mb"])
    try:
        template = _environment().from_string(setup["source"])
    except MemoryError:
        return send({"error": f"compiling it needs more than {setup['memory_mb']} MB"})
    except Exception as e:  # noqa: BLE001 - a template that does not compile, for whatever reason
        return send({"error": f"not a Jinja template ({type(e).__name__}: {str(e)[:300]})"})
    send({"loaded": True})
    for line in sys.stdin:
        send(_render(template, json.loads(line)["messages"], setup["max_chars"]))


if __name__ == "__main__":
    _serve()
