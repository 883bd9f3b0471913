"""mixer-serve's access log: a line per request on stdout, written by a thread of its own."""
from __future__ import annotations

import queue
import threading
import time

USAGE = "micromixer.usage"  # a request's usage, for the access log (its scope["state"])
LOG_QUEUE = 10_000          # access-log lines waiting for stdout at most


class LineWriter:
    """Lines for stdout, written by a thread of their own (see AccessLog)."""

    def __init__(self):
        self.lines, self.dropped = queue.Queue(LOG_QUEUE), 0
        threading.Thread(target=self._write, name="mixer-access-log", daemon=True).start()

    def put(self, line: str) -> None:
        try:
            self.lines.put_nowait(line + (f" ({self.dropped} lines dropped before)" if self.dropped else ""))
            self.dropped = 0
        except queue.Full:
            self.dropped += 1

    def drain(self, seconds: float = 1.0) -> None:
        """Wait (a while) for the lines still queued to be written: at shutdown."""
        deadline = time.monotonic() + seconds
        while self.lines.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write(self):
        while True:
            line = self.lines.get()
            try:
                print(line, flush=True)
            except (OSError, ValueError):  # stdout closed or broken: the server goes on without it
                return
            finally:
                self.lines.task_done()


class AccessLog:
    """ASGI middleware: one line per request on stdout when its response has gone out: client,
    method, path (as sent, percent-encoded, at most 80 characters: a client cannot forge a line),
    status, body bytes sent, time, and for completions OpenAI's usage counts (prompt_tokens with
    bos, completion_tokens). Never a prompt, a text, a query string or a key. A thread writes the
    lines: stdout that blocks (a pipe nobody reads, a paused terminal) must not stop the event
    loop; past LOG_QUEUE lines waiting, lines are dropped (and counted in the next one written)."""

    def __init__(self, app, writer: "LineWriter"):
        self.app, self._log = app, writer.put

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, sent = time.perf_counter(), {"status": 0, "bytes": 0}

        async def counting(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)
        try:
            await self.app(scope, receive, counting)
        finally:
            usage = scope.get("state", {}).get(USAGE)
            tokens = (f" prompt_tokens {usage['prompt_tokens']} completion_tokens {usage['completion_tokens']}"
                      if usage else "")
            client = (scope.get("client") or ("-",))[0]
            raw = (scope.get("raw_path") or scope["path"].encode())[:80]
            path = "".join(chr(b) if 32 < b < 127 else f"\\x{b:02x}" for b in raw)
            self._log(f"{client} {scope['method']} {path} {sent['status'] or '-'} {sent['bytes']} B "
                      f"{(time.perf_counter() - t0) * 1000:.1f} ms{tokens}")
