"""What mixer-serve is configured with: one dataclass, whose fields are also the CLI's flags
(serve/cli.py builds one `--flag` per field from its type, default and help)."""
from __future__ import annotations

import dataclasses

from ..errors import MixerError


# The API's own bounds and defaults (OpenAI's, and llama.cpp's for repeat_penalty): serve/fields.py
DEFAULT_MAX_TOKENS = 16     # OpenAI's default for /v1/completions
# (the sampling fields' bounds are runtime/sampling.py's: SamplingParams' field metadata)
MAX_STOP_STRINGS = 16       # OpenAI allows 4; lm-eval adds the eos string to a task's own
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for completions' logprobs (chat's, 20, is runtime/logprobs.py's)
# echo with logprobs scores every prompt byte; in window mode each byte past W is a call of W
# bytes (~7 ms for the 1m model on x86, far more on a Pi): at most this many prompt bytes a request
MAX_WINDOW_SCORED_BYTES = 1024


def _opt(default, help: str, minimum=None, maximum=None):
    return dataclasses.field(default=default, metadata={"help": help, "min": minimum, "max": maximum})


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    host: str = _opt("127.0.0.1", "Address to bind; 0.0.0.0 serves the LAN (see docs/raspberry-pi.md).")
    port: int = _opt(8080, "0 picks a free port (printed when ready).", 0, 65535)
    threads: int = _opt(1, "onnxruntime intra-op threads.", 1)
    max_batch: int = _opt(32, "Rows decoding together in one step.", 1)
    max_queue: int = _opt(128, "Requests waiting for a row; past it the server answers 429.", 1)
    max_prompt_bytes: int = _opt(65536, "Longer prompts get 413.", 1)
    prompt_cache_mb: float = _opt(16.0, "Memory for states of recent prompts (a few KB each), which a prompt "
                                        "sharing their start resumes from; 0 turns the cache off.", 0)
    max_tokens_limit: int = _opt(4096, "The largest max_tokens a request may ask for.", 1)
    max_answer_mb: float = _opt(8.0, "The most JSON one answer may hold (choices x bytes x logprob entries, echo "
                                     "included), estimated before it runs; past it a 400 says what to lower.", 0.001)
    answers_in_flight_mb: float = _opt(64.0, "The most JSON all answers in flight may hold together (each counted "
                                             "at its estimate); past it a request gets 429.", 0.001)
    template_seconds: float = _opt(1.0, "A chat template must render within this many seconds (else that "
                                        "request's 400) and load within 10x as long (else the server refuses to "
                                        "start); it runs in a process of its own.", 0.01)
    constraint_seconds: float = _opt(2.0, "A structured-output constraint (JSON schema, regex, grammar) must compile, "
                                          "with its first mask, within this many seconds, else that request's 400; "
                                          "constraints compile one at a time, off the decode thread.", 0.01)
    constraint_mask_ms: float = _opt(2.0, "A constrained row whose next mask takes longer than this fails (its request's "
                                          "400): the decode thread computes masks while the other rows wait (an "
                                          "ambiguous grammar's grow with its text); ~0.01-0.1 ms usual on x86; raise it "
                                          "on a slow board.", 0.01)
    timeout_seconds: float = _opt(5.0, "A request (headers and body) must arrive within this many seconds "
                                       "of its first byte, else 408 and the connection closes; also the "
                                       "keep-alive idle time, and how long a client may leave a full write "
                                       "buffer unread before its connection is dropped.", 0.1)
    max_connections: int = _opt(512, "Open connections at most; one past it gets 503 and is closed.", 1)
    shutdown_seconds: float = _opt(5.0, "On SIGTERM/SIGINT, in-flight streams end within this many seconds.", 0)
    api_key: str = _opt(None, "Require 'Authorization: Bearer KEY' on every route but /health and the "
                              "playground page (which asks for it).")
    api_key_file: str = _opt(None, "As --api-key, the key read from this file's first line (kept out of "
                                   "the process list).")
    state_key_file: str = _opt(None, "Sign the conversation states the server returns (return_state) with the key "
                                     "in this file (HMAC-SHA256), and take back only states it signed: use it "
                                     "when the template adds what a client must not drop or change (a system "
                                     "prompt), and share it across a fleet (docs/fleet.md).")
    chat_template: str = _opt(None, "A Jinja template file that turns chat messages into the prompt "
                                    "(default: their texts, a blank line apart; docs/server.md).")
    access_log: bool = _opt(True, "A line per request on stdout: client, method, path, status, bytes, "
                                  "time, prompt and generated byte counts (never a text or a key).")
    cors_origins: str = _opt("", "Comma-separated origins whose pages may call the API (CORS), e.g. "
                                 "http://localhost:3000; '*' for any. Default: none.")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            low, high, value = f.metadata.get("min"), f.metadata.get("max"), getattr(self, f.name)
            if low is not None and value < low or high is not None and value > high:
                raise MixerError(f"--{f.name.replace('_', '-')} must be from {low} to {high}" if high is not None
                                 else f"--{f.name.replace('_', '-')} must be at least {low}")
        if self.answers_in_flight_mb < self.max_answer_mb:
            raise MixerError("--answers-in-flight-mb must be at least --max-answer-mb (one answer must fit)")

    @property
    def max_answer_bytes(self) -> int:
        return int(self.max_answer_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        """A JSON body may escape each prompt byte as \\uXXXX (6 bytes), plus room for the rest (a
        structured-output constraint is up to 64 KB, and one over it gets a 400 that says so)."""
        return 6 * self.max_prompt_bytes + 2**21
