"""How every command turns expected failures into one line on stderr and an exit code."""
from __future__ import annotations

import sys

import click

from .format import MixerError

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPT = 2, 1, 130

# Errors that mean "bad input": reported as one line, never a traceback. A bare ValueError is a
# bug: it keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (MixerError,)


def run_cli(command: click.Command, args=None) -> int:
    """Run a click command in standalone=False mode and map outcomes to exit codes."""
    try:
        command.main(args=args, standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        return _interrupted()
    except KeyboardInterrupt:
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
    sys.stdout.flush()
    click.echo("\ninterrupted", err=True)
    return EXIT_INTERRUPT
