"""The decode loop against the bare model step, interleaved in one process (issue 27).

    python scripts/engine_bench.py MODEL.onnx [--rows 1,8,32] [--steps 400] [--repeats 5]

For each batch size: the bare IO-bound stepper (one call a step, the same bytes fed every time)
and the engine stepping that many rows of `--steps` seeded bytes, greedy and at temperature 0.8
with the default filters, a repetition penalty (1.1) on one row in four, one onnxruntime thread;
last, at 0.8 with logprobs=5 on every row.
Rows use the unbounded context mode, so that no row re-folds (a bounded mode's re-fold is a
W-token model call, model work rather than loop overhead: `--context halve` includes it). Each
figure is the median of `--repeats` runs taken in turn; prints us a step and engine / bare.
"""
import argparse
import statistics
import time

from micromixer_edge.runtime.engine import Engine, GenerateOptions
from micromixer_edge.runtime.model import MixerModel
from micromixer_edge.runtime.sampling import SamplingParams
from micromixer_edge.runtime.cpu import kernel_flags


def bare(model: MixerModel, rows: int, steps: int) -> float:
    stepper, tokens = model.stepper(rows), [65] * rows
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.step(tokens)
    return (time.perf_counter() - t0) / steps


def loop(model: MixerModel, rows: int, steps: int, temperature: float, context: str,
         logprobs: int | None = None) -> float:
    engine = Engine(model)
    for i in range(rows):
        sampling = SamplingParams(temperature=temperature, ignore_eos=True,
                                  repetition_penalty=1.1 if i % 4 == 3 else 1.0)
        engine.add("Once upon a time", GenerateOptions(max_new_tokens=steps, sampling=sampling, seed=i,
                                                       context=context, logprobs=logprobs))
    t0 = time.perf_counter()
    for _ in engine.run():
        pass
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--context", default="unbounded")
    a = p.parse_args()
    model = MixerModel(a.model, threads=1)
    print(f"{a.model}: {a.steps} bytes a row, context {a.context}, one thread; cpu flags {kernel_flags()}")
    print("| rows | bare step us | engine greedy us (x bare) | engine T 0.8 us (x bare) | T 0.8, logprobs 5 |")
    print("|---|---|---|---|---|")
    for rows in [int(r) for r in a.rows.split(",")]:
        runs = {"bare": [], "greedy": [], "0.8": [], "logprobs": []}
        for _ in range(a.repeats):
            runs["bare"].append(bare(model, rows, a.steps))
            runs["greedy"].append(loop(model, rows, a.steps, 0.0, a.context))
            runs["0.8"].append(loop(model, rows, a.steps, 0.8, a.context))
            runs["logprobs"].append(loop(model, rows, a.steps, 0.8, a.context, logprobs=5))
        b, g, t, lp = (statistics.median(runs[k]) * 1e6 for k in ("bare", "greedy", "0.8", "logprobs"))
        print(f"| {rows} | {b:.0f} | {g:.0f} ({g / b:.2f}x) | {t:.0f} ({t / b:.2f}x) | {lp:.0f} ({lp / b:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    main()
