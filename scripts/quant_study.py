"""Which quantization choices pay off: size, accuracy, invariance and step speed of each variant,
as a markdown table (docs/performance.md's table comes from this script).

    python scripts/quant_study.py out/micromixer-1m.onnx VALID_TEXT [CALIBRATION_TEXT]

Accuracy is over every story of VALID_TEXT (halve mode). The step of each variant is timed in turns
with the float model and with the default dynamic int8 of the same export, so that a noisy machine
slows all three alike; "x dynamic" is the ratio of those medians.
"""
import math
import os
import sys
import tempfile

from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.quantize.report import compare_on_text, invariance
from micromixer_edge.codec import read_stories
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.timing import step_tokens_per_s

VARIANTS = {
    "int8, float arithmetic (default)": QuantOptions(mode="int8"),
    "int8, embedding float": QuantOptions(mode="int8", embedding=False),
    "int8-block, blocks of 32": QuantOptions(mode="int8-block"),
    "int8-block, blocks of 64": QuantOptions(mode="int8-block", int8_block_size=64),
    "int8-block, embedding float": QuantOptions(mode="int8-block", embedding=False),
    "int8 dynamic, per-tensor": QuantOptions(mode="dynamic"),
    "int8 dynamic, per-channel": QuantOptions(mode="dynamic", per_channel=True),
    "int8 static QDQ, per-tensor": QuantOptions(mode="static"),
    "int4, block 64": QuantOptions(mode="int4", block_size=64),
}


def main(src, text, calibration=None):
    stories = read_stories(text)
    base = MixerModel(src)
    size = os.path.getsize(src)
    print("| variant | size | of float | bits/byte | change | KL nats | top-1 | batch / chunk diff "
          "| step µs | x dynamic | x float |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        dyn_path = os.path.join(tmp, "dynamic.onnx")
        quantize_file(src, dyn_path, QuantOptions(mode="dynamic"))
        dyn = MixerModel(dyn_path)
        for i, (name, options) in enumerate(VARIANTS.items()):
            out = os.path.join(tmp, f"{i}.onnx")
            quantize_file(src, out, options, calibration=calibration or text)
            q = MixerModel(out)
            nf, nq, kl, hits, count = compare_on_text(base, q, stories)
            batch, chunk = invariance(q)
            rate_f, rate_d, rate_q = step_tokens_per_s([base, dyn, q], repeats=15)
            if i == 0:
                print(f"| float | {size / 1e6:.2f} MB | 100% | {nf / count / math.log(2):.4f} | | | | "
                      f"{' / '.join(f'{v:.2g}' for v in invariance(base))} | {1e6 / rate_f:.0f} | | |")
            print(f"| {name} | {os.path.getsize(out) / 1e6:.2f} MB | {os.path.getsize(out) / size:.1%} | "
                  f"{nq / count / math.log(2):.4f} | {nq / nf - 1:+.2%} | {kl / count:.5f} | {hits / count:.2%} | "
                  f"{batch:.2g} / {chunk:.2g} | {1e6 / rate_q:.0f} | {rate_d / rate_q:.2f} | {rate_f / rate_q:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
