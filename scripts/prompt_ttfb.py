"""Time to first byte of a long prompt (a TinyStories prefix of N KB) in a context mode.

    python scripts/prompt_ttfb.py MODEL.onnx halve|window|unbounded 1,20,100
"""
import sys
import time
from micromixer_edge.runtime.engine import GenerateOptions
from micromixer_edge.runtime.model import MixerModel as load
mk = GenerateOptions.of
from micromixer_edge.runtime.generate import stream
from micromixer_edge.codec import read_stories
m = load(sys.argv[1])
text = b"\n\n".join(read_stories("../shared/data/tinystories/train.txt")).decode("utf-8", "replace")
for size in map(int, sys.argv[3].split(",")):
    prompt = text[:size * 1000]
    t = time.perf_counter()
    next(iter(stream(m, prompt, mk(max_new_tokens=5, temperature=0, ignore_eos=True, context=sys.argv[2]))))
    print(f"{sys.argv[2]} {size} KB: {(time.perf_counter() - t) * 1e3:.1f} ms", flush=True)
