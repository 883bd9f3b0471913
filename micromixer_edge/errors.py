"""Every error class of the package, and how the commands turn them into one line and an exit code.

MixerError and its kinds mean bad input from a user (a file, a flag, an argument, a request): the
CLI prints the message as one line on stderr. Anything else that escapes is a bug and keeps its
traceback. Needs nothing but the standard library (click is imported by run_cli alone).
"""
from __future__ import annotations

import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130


class MixerError(ValueError):
    """Bad input from a user (a file, a flag, an argument): the CLI prints its message as one line."""


class FormatError(MixerError):
    """A model file that is not a MicroMixer export this code can read."""


class SnapshotError(FormatError):
    """A snapshot that cannot be resumed here (corrupt, truncated, other model, other version)."""


class ConstraintError(MixerError):
    """A row's structured-output constraint failed while it generated (a limit of the grammar's
    parser, bytes the model cannot write): the request's fault, a 400 in the server."""


class CheckpointError(MixerError):
    """A checkpoint that cannot be loaded as a MicroMixerV2 model."""


class ValidationError(MixerError):
    """onnxruntime disagrees with PyTorch beyond the tolerance (export refuses the file)."""


class OutputError(MixerError):
    """An output path that cannot be written."""


# --- the server's (serve/): what a request gets instead of a completion -------------------------
class BadRequest(Exception):
    """A request the server refuses: an HTTP status, a message, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class TemplateRefused(Exception):
    """A chat template's raise_exception(message): its message is the request's 400."""


class QueueFull(Exception):
    """More requests wait than --max-queue allows (429)."""


class ShuttingDown(Exception):
    """The server stopped accepting requests (503)."""


# Errors that mean "bad input": reported as one line, never a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (MixerError,)


def run_cli(command, args=None) -> int:
    """Run a click command in standalone=False mode and map outcomes to exit codes."""
    import click
    try:
        command.main(args=args, standalone_mode=False)
        return EXIT_OK
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except OSError as e:  # a file the user named: "PATH: no such file or directory"
        text = f"{e.filename}: {e.strerror.lower()}" if e.filename and e.strerror else str(e)
        click.echo(f"error: {text}", err=True)
        return EXIT_ERROR
    except USER_ERRORS as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_ERROR


def _interrupted() -> int:
    import click
    sys.stdout.flush()
    click.echo("\ninterrupted", err=True)
    return EXIT_INTERRUPT
