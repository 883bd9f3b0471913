"""mixer-quantize: a thin click layer over quantize_file and build_report."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from .._files import atomic_output, check_output_path
from ..errors import run_cli
from ..format import NEEDS_DOT_PRODUCT, QUANT_SCHEMES, TARGETS
from .quantize import MATMUL_GROUPS, QuantOptions

CONTEXT = {"help_option_names": ["-h", "--help"]}


def default_text() -> str | None:
    """The held-out stories, when MICROMIXER_DATA points at the TinyStories folder."""
    data = os.environ.get("MICROMIXER_DATA")
    path = Path(data) / "valid.txt" if data else None
    return str(path) if path and path.is_file() else None


@click.command(context_settings=CONTEXT)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="Quantized .onnx to write.")
@click.option("--mode", type=click.Choice(list(QUANT_SCHEMES)),
              help="int8: int8 arithmetic with a scale per activation row (a row's bytes never depend "
                   "on its batch or chunking; onnxruntime's integer GEMM). portable: int8 weights "
                   "computed in float, standard ONNX (the same bytes on any CPU). int8-block: "
                   "MatMulNBits blocks of 32, fastest lone stream where the CPU has an int8 dot "
                   "product. dynamic: standard ONNX, one activation scale per tensor (batch- and "
                   "chunk-dependent). [default: the --target's]")
@click.option("--target", type=click.Choice(list(TARGETS)), default="generic", show_default=True,
              help="The board the model is for: generic, pi4 and pi5 pick int8 (MLAS has an integer "
                   "kernel for each); pi32 (32-bit Pi OS, numpy backend) picks portable.")
@click.option("--per-channel", is_flag=True, help="dynamic: one weight scale per output channel.")
@click.option("--keep-float", multiple=True, type=click.Choice(MATMUL_GROUPS),
              help="MatMul groups to leave in float (repeatable).")
@click.option("--no-embedding", is_flag=True, help="Leave the embedding table in float.")
@click.option("--text", "text_path", type=click.Path(),
              help="Text for the accuracy report [default: $MICROMIXER_DATA/valid.txt].")
@click.option("--limit", type=click.IntRange(min=1), help="Report on at most this many stories.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also save the report as JSON.")
def quantize_command(model_path, output, mode, target, per_channel, keep_float, no_embedding,
                     text_path, limit, report_path):
    """Quantize a float MicroMixer export and measure what it cost."""
    from .quantize import quantize_file
    from .report import build_report
    text_path = text_path or default_text()
    if text_path and not Path(text_path).is_file():
        raise click.UsageError(f"--text {text_path}: no such file")
    if report_path:
        check_output_path(report_path, model_path)
    mode = mode or TARGETS[target]
    if target == "pi4" and QUANT_SCHEMES[mode] in NEEDS_DOT_PRODUCT:
        click.echo(f"warning: a Pi 4 has no int8 dot product: onnxruntime runs {QUANT_SCHEMES[mode]} there "
                   "on a slow fallback; --mode int8 is the scheme for it", err=True)
    options = QuantOptions(mode=mode, per_channel=per_channel, float_parts=tuple(keep_float),
                           embedding=not no_embedding)
    meta = quantize_file(model_path, output, options)
    size = lambda p: Path(p).stat().st_size / 1e6  # noqa: E731
    click.echo(f"wrote {output}: {meta['quantization']}, {size(output):.2f} MB "
               f"({size(output) / size(model_path):.1%} of {size(model_path):.2f} MB)")
    if meta["quantization"] in NEEDS_DOT_PRODUCT and target == "generic":
        click.echo(f"note: {meta['quantization']} runs fast where the CPU has an int8 dot product (x86 "
                   "AVX2 or later, Raspberry Pi 5), and its bytes differ between CPUs; for a "
                   "Raspberry Pi 4 use --target pi4", err=True)
    if not text_path:
        click.echo("no accuracy report: pass --text FILE (or set MICROMIXER_DATA)", err=True)
        return
    report = build_report(model_path, output, text_path, limit)
    click.echo(report.table())
    if report_path:
        with atomic_output(report_path) as tmp:
            Path(tmp).write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
        click.echo(f"wrote {report_path}")


def main():
    sys.exit(run_cli(quantize_command))


if __name__ == "__main__":
    main()
