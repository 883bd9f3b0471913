"""Command-line layer of the export side: parse, convert, call one library function."""
from __future__ import annotations

import sys

import click

from ..format import DEFAULT_OPSET, DEFAULT_SIZE, HUB_REPOS, MAX_OPSET, MIN_OPSET, SIZES
from ..errors import run_cli

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=CONTEXT)
@click.option("--size", type=click.Choice(list(SIZES)),
              help="Model preset [default: inferred from the checkpoint; 1m for the bundled weights].")
@click.option("--checkpoint", "-c", type=click.Path(),
              help="A MicroMixer-1 checkpoint: a plain state_dict (model.pt) or a training-script file.")
@click.option("--from-hub", "hub_repo", is_flag=False, flag_value="", default=None, metavar="[REPO_ID]",
              help="Fetch model.pt from the Hugging Face hub (cached) [default repo: the size's published one]. "
                   "Needs the 'hub' extra.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="The .onnx file to write [default: micromixer-SIZE.onnx].")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (each tested; 20 makes Gelu a single op).")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Largest max-abs logit difference accepted by validation.")
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime-vs-PyTorch validation.")
def export_command(size, checkpoint, hub_repo, output, opset, atol, no_validate):
    """Export MicroMixerV2 to one self-contained, stateful ONNX step graph.

    Without --checkpoint or --from-hub it uses the weights bundled with this package.
    """
    from .api import export_checkpoint
    if hub_repo == "":
        hub_repo = HUB_REPOS[size or DEFAULT_SIZE]
    export_checkpoint(size=size, checkpoint=checkpoint, hub_repo=hub_repo, output=output,
                      opset=opset, atol=atol, validate=not no_validate, log=click.echo)


def main():
    sys.exit(run_cli(export_command))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", type=click.Choice(list(SIZES)), default=DEFAULT_SIZE, show_default=True, help="Model preset.")
@click.option("--train", "train_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="UTF-8 training text, stories separated by blank lines.")
@click.option("--valid", "valid_path", type=click.Path(exists=True, dir_okay=False),
              help="Validation text (bits/byte is measured on its first --eval-stories stories).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint to write (training-script format; saved at each evaluation).")
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=2), help="Tokens per row [default: the preset's max_seq_len].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Dropout on each residual branch (training only).")
@click.option("--eval-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--eval-stories", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads [default: all cores].")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), help="Continue from a checkpoint this command wrote.")
@click.option("--stop-after", type=click.IntRange(min=1), help="End this run after N steps (resume later).")
def train_command(train_path, valid_path, output, resume, stop_after, **kw):
    """Train a MicroMixerV2 preset on the CPU (cosine schedule, AdamW)."""
    from .train import TrainConfig, train
    from .._files import check_output_path
    check_output_path(output, train_path, valid_path)
    curve = train(TrainConfig(**kw), train_path, valid_path, output, resume, stop_after)
    for step, bpb in curve:
        click.echo(f"step {step}: valid {bpb:.4f} bits/byte")
    click.echo(f"wrote {output}")


def train_main():
    sys.exit(run_cli(train_command))


if __name__ == "__main__":
    main()
