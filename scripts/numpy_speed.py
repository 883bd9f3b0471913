"""The numpy backend's speed against onnxruntime's on this machine: greedy bytes/s of the same
files (32-bit Pi OS runs the numpy backend; docs/raspberry-pi.md).
    python scripts/numpy_speed.py out/micromixer-1m.onnx m-port.onnx out/micromixer-1m-int8.onnx
"""
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, as onnxruntime is given (before numpy loads)

from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.generate import generate
from micromixer_edge.runtime.model import MixerModel

TOKENS, TRIALS = 300, 3


def rate(path: str, backend: str) -> float:
    model, options = MixerModel(path, backend=backend), GenerateOptions.of(max_new_tokens=TOKENS, temperature=0,
                                                                            ignore_eos=True)
    generate(model, "Once upon a time", options)  # warm-up
    best = min(_timed(model, options) for _ in range(TRIALS))
    return TOKENS / best


def _timed(model, options) -> float:
    t0 = time.perf_counter()
    generate(model, "Once upon a time", options)
    return time.perf_counter() - t0


if __name__ == "__main__":
    print("| model | onnxruntime | numpy backend |\n|---|---|---|")
    for path in sys.argv[1:]:
        print(f"| {path} | {rate(path, 'onnxruntime'):,.0f} bytes/s | {rate(path, 'numpy'):,.0f} bytes/s |")
