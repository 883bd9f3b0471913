"""Export a checkpoint (default: the bundled 1m weights) and generate text, all from Python.

    python examples/export_and_run.py [CHECKPOINT.pt] [--out model.onnx]
"""
import argparse

from micromixer_edge import MixerModel
from micromixer_edge.export.api import export_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("checkpoint", nargs="?", help="a MicroMixer-1 checkpoint (default: bundled 1m)")
parser.add_argument("--out", default="micromixer-example.onnx")
args = parser.parse_args()

export_checkpoint(size=None if args.checkpoint else "1m", checkpoint=args.checkpoint, output=args.out)
print(MixerModel(args.out).generate("Once upon a time", max_new_tokens=200, temperature=0.8, seed=1))
