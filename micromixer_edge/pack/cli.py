"""mixer-pack: a thin click layer over make_bundle."""
from __future__ import annotations

import sys

import click

from ..errors import run_cli
from ..format import NEEDS_DOT_PRODUCT, NUMPY_TARGETS, QUANT_NONE, QUANT_SCHEMES, TARGETS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Bundle to write: a directory, or a file ending in .tar.gz (--target web: a directory).")
@click.option("--no-deps", is_flag=True,
              help="Leave out the aarch64 wheels of numpy/onnxruntime/click (the board then fetches them).")
@click.option("--serve", is_flag=True,
              help="Also bundle mixer-serve's dependencies and a systemd unit (./install.sh --service).")
@click.option("--target", type=click.Choice([*TARGETS, "web"]), default="generic", show_default=True,
              help="The board: pi4 warns about schemes that need the int8 dot product it lacks; pi32 "
                   "is 32-bit Raspberry Pi OS (Pi Zero 2 W, Pi 3, 32-bit Pi 4): no onnxruntime there, "
                   "the bundle installs over apt's numpy and click. web: a static folder that runs the "
                   "model in a browser with onnxruntime-web (fetched with npm once; docs/web.md).")
def pack_command(model_path, output, no_deps, serve, target):
    """Bundle a model with the runtime for a Raspberry Pi (copy, install, self-test), or as a web page."""
    if target == "web":
        return _pack_web(model_path, output, no_deps, serve)
    from .bundle import make_bundle, model_scheme
    scheme = model_scheme(model_path)
    fast_in_numpy = (QUANT_NONE, QUANT_SCHEMES[TARGETS[target]])
    if target in NUMPY_TARGETS and scheme not in fast_in_numpy:
        click.echo(f"note: on 32-bit Pi OS the numpy backend runs {scheme} about 3x slower than float "
                   f"(numpy has no fast int8 GEMM); for this board quantize the float export with: "
                   f"mixer-quantize FLOAT.onnx -o MODEL.onnx --target {target}", err=True)
    elif target == "pi4" and scheme in NEEDS_DOT_PRODUCT:
        click.echo(f"warning: {scheme} runs on onnxruntime's slow fallback on a Pi 4 (no int8 dot "
                   "product); for this board quantize the float export with: mixer-quantize FLOAT.onnx "
                   "-o MODEL.onnx --target pi4", err=True)
    elif scheme in NEEDS_DOT_PRODUCT:
        click.echo(f"note: {scheme} needs the int8 dot product (Pi 5); for a Pi 4 pack a model made "
                   "with mixer-quantize --target pi4", err=True)
    out = make_bundle(model_path, output, with_deps=not no_deps, serve=serve, target=target)
    click.echo(f"wrote {out}: copy it to the board, then run ./install.sh there")


def _pack_web(model_path, output, no_deps, serve):
    from ..errors import MixerError
    from .web import make_web
    if no_deps or serve:
        raise MixerError("--no-deps and --serve are for Pi bundles, not --target web")
    from .bundle import model_scheme
    if model_scheme(model_path) == QUANT_SCHEMES["int8-block"]:
        click.echo("note: int8-block (MatMulNBits) runs ~5x slower in onnxruntime-web than the default int8 "
                   "(718 against 3,598 bytes/s measured in Chromium); for the page, pack the default int8", err=True)
    out = make_web(model_path, output)
    click.echo(f"wrote {out}: serve it with python3 {out}/serve.py and open http://127.0.0.1:8000/ (docs/web.md)")


def main():
    sys.exit(run_cli(pack_command))


if __name__ == "__main__":
    main()
