"""mixer-serve: a thin click layer that builds Settings and runs the app under uvicorn."""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading

import click

from ..errors import EXIT_ERROR, run_cli

try:
    import uvicorn
    from .http import guarded_protocol
except ImportError as e:  # the [serve] extra is missing: one line, not a traceback
    click.echo(f"error: mixer-serve needs the serve extra ({e.name} is missing): "
               "pip install 'micromixer-edge[serve]'", err=True)
    raise SystemExit(EXIT_ERROR) from None
from .settings import Settings

# The decode thread computes in Python between onnxruntime calls; the event loop needs the GIL for
# moments to write each stream's events. At CPython's default 5 ms a waiting thread can sit out a
# whole 5 ms; at 0.5 ms the loop's writes get in between steps (scripts/serve_bench.py: three of
# four A/B pairs favour it at 32 clients, docs/performance.md).
SWITCH_SECONDS = 0.0005
# Answers in flight hold up to a million small objects (logprob entries); CPython's default GC
# thresholds (700, 10, 10) walk them all in frequent full collections, each a pause of the event
# loop: 10 whole answers of 4,096 bytes x 20 alternatives kept /health at 313-414 ms, 144-208 ms
# with these (docs/performance.md). What is loaded at start is frozen out of the collections.
GC_THRESHOLDS = (50_000, 20, 100)
# A request body may nest JSON deeper than CPython's default limit (1,000) lets json.loads go, as a
# hostile JSON schema does: parsed, it gets a 400 that names its field (a schema nests at most 64
# deep, runtime/constraint.py); the C decoder's frames are small, so the main thread's stack holds
JSON_DEPTH = 5000
DEATH_GRACE_SECONDS = 1.0  # a dead decode loop: 503s (and /health's reason) this long, then exit 1


def _flag(f: dataclasses.Field):
    """One click option per Settings field: its type, default, lower bound and help."""
    low, high = f.metadata["min"], f.metadata["max"]
    if isinstance(f.default, bool):
        name = f.name.replace("_", "-")
        return click.option(f"--{name}/--no-{name}", default=f.default, show_default=True, help=f.metadata["help"])
    kind = {int: click.IntRange(low, high), float: click.FloatRange(low, high)}.get(type(f.default), str)
    return click.option("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                        show_default=f.default not in (None, ""), help=f.metadata["help"])


def _settings_flags(command):
    for f in reversed([f for f in dataclasses.fields(Settings) if f.name != "model"]):
        command = _flag(f)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@_settings_flags
def serve_command(model, **kw):
    """Serve a MicroMixer model: OpenAI-compatible /v1/completions (streaming), a playground at /."""
    run(Settings(model=model, **kw))


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (exit 0), or until the decode loop dies (exit 1, so that a
    supervisor such as systemd restarts the server)."""
    from .app import create_app
    sys.setswitchinterval(SWITCH_SECONDS)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), JSON_DEPTH))
    died = []

    def on_death():  # from the decode thread: uvicorn's main loop polls should_exit
        died.append(True)  # (it answers 503 for DEATH_GRACE_SECONDS first: /health says why)
        threading.Timer(DEATH_GRACE_SECONDS, setattr, (server, "should_exit", True)).start()
    app = create_app(settings, on_death)  # loads the model: a bad file fails here, before binding
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    server = UvicornServer(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
        http=guarded_protocol(settings.timeout_seconds, settings.max_connections),
        timeout_keep_alive=settings.timeout_seconds, timeout_graceful_shutdown=0.8 * settings.shutdown_seconds))
    server.shutdown_seconds = settings.shutdown_seconds
    server.decode_loop = app.state.server.loop
    server.run()  # uvicorn picks uvloop when installed
    if app.state.access_log is not None:
        app.state.access_log.drain()
    if server.started and not died:
        click.echo("mixer-serve: stopped")
    if died:
        click.echo(f"error: the decode loop died ({server.decode_loop.dead}); exiting", err=True)
        raise SystemExit(EXIT_ERROR)
    if not server.started:
        raise SystemExit(EXIT_ERROR)


class UvicornServer(uvicorn.Server):
    """Prints its address when ready; on SIGTERM/SIGINT ends the rows in flight (each stream gets
    its final event and [DONE]) and then lets uvicorn shut down gracefully."""

    shutdown_seconds = 5.0

    def handle_exit(self, sig, frame):
        self.decode_loop.end_all()
        if not self.should_exit:  # whatever is still running then (a stalled write, a fold), the process ends
            threading.Timer(self.shutdown_seconds, _exit_now, (0, "mixer-serve: stopped (at --shutdown-seconds)")).start()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None):
        await super().shutdown(sockets)
        # uvicorn re-raises a captured SIGTERM/SIGINT after its shutdown, which would end the
        # process by the signal; the shutdown was clean, so exit 0 instead
        self._captured_signals.clear()

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            click.echo(f"mixer-serve: listening on http://{host}:{port}")
            sys.stdout.flush()


def _exit_now(code: int, line: str | None = None) -> None:
    """Exit without waiting for the worker threads (a long prompt folding on the prefill thread, a
    chat template's render): SIGTERM must end the server within --shutdown-seconds."""
    if line:
        click.echo(line)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    _exit_now(run_cli(serve_command))


if __name__ == "__main__":
    main()
