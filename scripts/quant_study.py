"""Which quantization schemes earn their place: size, accuracy, invariance and step time of each,
as a markdown table (docs/performance.md's table comes from this script).

    python scripts/quant_study.py out/micromixer-1m.onnx VALID_TEXT

Accuracy is over every story of VALID_TEXT (halve mode) against the float export. The step (one
token per row, state carried, 1 thread) at batch 1, 8 and 32 is timed in turns with the float
model and the dynamic int8 of the same export, so that a noisy machine slows them alike; each
ratio is of medians taken in the same run. The CPU's int8 instructions matter: the flags are
printed first.
"""
import math
import os
import platform
import sys
import tempfile

from micromixer_edge.codec import read_stories
from micromixer_edge.quantize.quantize import QuantOptions, quantize_file
from micromixer_edge.quantize.report import compare_on_text, invariance
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.timing import step_tokens_per_s

VARIANTS = {
    "`int8` (default): int8 arithmetic, a scale per row": QuantOptions(mode="int8"),
    "`portable`: int8 weights, float arithmetic": QuantOptions(mode="portable"),
    "`int8-block`: MatMulNBits, blocks of 32": QuantOptions(mode="int8-block"),
    "`dynamic`: a scale per tensor": QuantOptions(mode="dynamic"),
}
BATCHES = (1, 8, 32)


def cpu_flags() -> str:
    flags = open("/proc/cpuinfo").read().split() if platform.system() == "Linux" else []
    return ", ".join(f for f in ("avx2", "avx_vnni", "avx512_vnni", "asimddp", "i8mm") if f in flags) or "none"


def step_ratios(base, dyn, q) -> list[str]:
    """'µs (x dynamic, x float)' at each batch size."""
    out = []
    for batch in BATCHES:
        rate_f, rate_d, rate_q = step_tokens_per_s([base, dyn, q], tokens=128, repeats=15, batch=batch)
        out.append(f"{1e6 / rate_q:.0f} ({rate_d / rate_q:.2f}, {rate_f / rate_q:.2f})")
    return out


def main(src, text):
    stories, base, size = read_stories(text), MixerModel(src), os.path.getsize(src)
    print(f"CPU int8 flags: {cpu_flags()}; {len(stories)} stories\n")
    print("| scheme | size | bits/byte | KL nats | top-1 | batch / chunk diff | step µs at batch 1 / 8 / 32 "
          "(x dynamic, x float) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        dyn_path = os.path.join(tmp, "dynamic.onnx")
        quantize_file(src, dyn_path, QuantOptions(mode="dynamic"))
        dyn = MixerModel(dyn_path)
        for i, (name, options) in enumerate(VARIANTS.items()):
            out = os.path.join(tmp, f"{i}.onnx")
            quantize_file(src, out, options)
            q = MixerModel(out)
            nf, nq, kl, hits, count = compare_on_text(base, q, stories)
            batch, chunk = invariance(q)
            if i == 0:
                print(f"| float | {size / 1e6:.2f} MB | {nf / count / math.log(2):.4f} | | | "
                      f"{' / '.join(f'{v:.2g}' for v in invariance(base))} | |")
            print(f"| {name} | {os.path.getsize(out) / size:.1%} | {nq / nf - 1:+.2%} | {kl / count:.5f} | "
                  f"{hits / count:.2%} | {batch:.2g} / {chunk:.2g} | {' / '.join(step_ratios(base, dyn, q))} |",
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
