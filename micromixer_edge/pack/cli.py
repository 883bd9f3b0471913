"""mixer-pack: a thin click layer over make_bundle."""
from __future__ import annotations

import sys

import click

from ..errors import run_cli


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Bundle to write: a directory, or a file ending in .tar.gz.")
@click.option("--no-deps", is_flag=True,
              help="Leave out the aarch64 wheels of numpy/onnxruntime/click (the board then fetches them).")
def pack_command(model_path, output, no_deps):
    """Bundle a model with the runtime for a Raspberry Pi (64-bit OS): copy, install, self-test."""
    from .bundle import make_bundle
    out = make_bundle(model_path, output, with_deps=not no_deps)
    click.echo(f"wrote {out}: copy it to the board, then run ./install.sh there")


def main():
    sys.exit(run_cli(pack_command))
