"""Which quantization choices pay off: size, bits/byte and step speed of each variant, as a
markdown table (the table in the README comes from this script).

    python scripts/quant_study.py out/micromixer-1m.onnx TEXT [CALIBRATION]
"""
import os
import sys
import tempfile

from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.runtime.evaluate import bits_per_byte, read_stories
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.timing import step_tokens_per_s

VARIANTS = {
    "int8 dynamic, per-tensor, s8 weights (default)": QuantOptions(),
    "int8 dynamic, per-channel": QuantOptions(per_channel=True),
    "int8 dynamic, u8 weights": QuantOptions(signed_weights=False),
    "int8 dynamic, embedding float": QuantOptions(embedding=False),
    "int8 dynamic, head float": QuantOptions(float_parts=("head",)),
    "int8 dynamic, hyper MLP float": QuantOptions(float_parts=("hyper",)),
    "int8 static QDQ, per-tensor": QuantOptions(mode="static"),
    "int8 static QDQ, per-channel": QuantOptions(mode="static", per_channel=True),
    "int4, block 32": QuantOptions(mode="int4", block_size=32),
    "int4, block 64 (default)": QuantOptions(mode="int4", block_size=64),
    "int4, block 128": QuantOptions(mode="int4", block_size=128),
}


def main(src, text, calibration=None):
    stories = read_stories(text)
    base = MixerModel(src)
    fb, size = bits_per_byte(base, stories, "halve").bits_per_byte, os.path.getsize(src)
    print("| variant | size | of float | bits/byte | change | step µs (float in the same run) |")
    print("|---|---|---|---|---|---|")
    print(f"| float | {size / 1e6:.2f} MB | 100% | {fb:.4f} | | |")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, options) in enumerate(VARIANTS.items()):
            out = os.path.join(tmp, f"{i}.onnx")
            quantize_file(src, out, options, calibration=calibration or text)
            q = MixerModel(out)
            qb = bits_per_byte(q, stories, "halve").bits_per_byte
            rate_f, rate_q = step_tokens_per_s([base, q])
            print(f"| {name} | {os.path.getsize(out) / 1e6:.2f} MB | {os.path.getsize(out) / size:.1%} | "
                  f"{qb:.4f} | {qb / fb - 1:+.2%} | {1e6 / rate_q:.0f} ({1e6 / rate_f:.0f}) |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
