"""mixer-serve: a thin click layer that builds Settings and runs the app under uvicorn."""
from __future__ import annotations

import sys

import click

from ..errors import run_cli
from ..format import MixerError

try:
    import uvicorn
except ImportError:  # pragma: no cover - the [serve] extra is missing
    raise MixerError("mixer-serve needs the serve extra: pip install 'micromixer-edge[serve]'") from None
from .settings import Settings

# The decode thread computes in Python between onnxruntime calls; the event loop needs the GIL for
# moments to write each stream's events. At CPython's default 5 ms a waiting thread can sit out a
# whole 5 ms; at 0.5 ms the loop's writes get in between steps (scripts/serve_bench.py: three of
# four A/B pairs favour it at 32 clients, docs/performance.md).
SWITCH_SECONDS = 0.0005


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 serves the LAN (see docs/raspberry-pi.md).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime threads.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rows decoding together in one step.")
@click.option("--max-queue", type=click.IntRange(min=1), default=128, show_default=True,
              help="Requests waiting for a row; past it the server answers 429.")
@click.option("--max-prompt-bytes", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Longer prompts get 413.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=4096, show_default=True,
              help="The largest max_tokens a request may ask for.")
@click.option("--shutdown-seconds", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="On SIGTERM/SIGINT, in-flight streams end within this many seconds.")
def serve_command(model, **kw):
    """Serve a MicroMixer model: OpenAI-compatible /v1/completions (streaming), a playground at /."""
    run(Settings(model=model, **kw))


def run(settings: Settings) -> None:
    from .app import create_app
    sys.setswitchinterval(SWITCH_SECONDS)
    app = create_app(settings)  # loads the model: a bad file fails here, before binding
    server = Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                   timeout_graceful_shutdown=settings.shutdown_seconds, lifespan="on"))
    server.decode_loop = app.state.server.loop
    server.run()  # uvicorn picks uvloop (and httptools) when installed
    if not server.started:
        raise SystemExit(1)


class Server(uvicorn.Server):
    """Prints its address when ready; on SIGTERM/SIGINT ends the rows in flight (each stream gets
    its final event and [DONE]) and then lets uvicorn shut down gracefully."""

    def handle_exit(self, sig, frame):
        self.decode_loop.end_all()
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


def main():
    sys.exit(run_cli(serve_command))


if __name__ == "__main__":
    main()
