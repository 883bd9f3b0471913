"""3,000 greedy bytes in halve and in unbounded mode: bytes/s and the longest gap between two pieces
(docs/performance.md).

    python scripts/halve_gap.py MODEL.onnx
"""
import sys
import time
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel as load
mk = GenerateOptions.of
from micromixer_edge.runtime.generate import stream
m = load(sys.argv[1])
for mode in ("halve", "unbounded"):
    o = mk(max_new_tokens=3000, temperature=0, ignore_eos=True, context=mode)
    res = []
    for _ in range(3):
        t = last = time.perf_counter(); gap = 0
        for piece in stream(m, "Once upon a time", o):
            now = time.perf_counter(); gap = max(gap, now - last); last = now
        res.append((3000 / (last - t), gap))
    r = max(res)
    print(f"{mode}: {r[0]:.0f} B/s, longest gap {max(g for _, g in res)*1e3:.2f} ms", end="; ")
print()
