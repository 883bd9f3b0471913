"""One sampling pass for a batch against one row at a time, in one process (docs/performance.md).

    python scripts/sampling_bench.py [--rows 32] [--reps 5]

Both paths are today's code (`sample_rows` over the (B, V) block; `Sampler.sample` per row), on the
same random logits with the default parameters; prints microseconds a step and the ratio.
"""
import argparse
import timeit

import numpy as np

from micromixer_edge.runtime.sampling import Sampler, SamplingParams, sample_rows

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=32)
p.add_argument("--reps", type=int, default=5)
a = p.parse_args()
logits = np.random.default_rng(0).normal(scale=3, size=(a.rows, 256)).astype(np.float32)
samplers = [Sampler(SamplingParams(), i) for i in range(a.rows)]
for _ in range(a.reps):
    alone = timeit.timeit(lambda: [s.sample(row) for s, row in zip(samplers, logits)], number=300) / 300
    batch = timeit.timeit(lambda: sample_rows(samplers, logits, [()] * a.rows), number=300) / 300
    print(f"{a.rows} rows: one at a time {alone * 1e6:7.0f} us | one pass {batch * 1e6:6.0f} us ({alone / batch:.1f}x)")
