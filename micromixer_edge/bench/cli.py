"""mixer-bench: a thin click layer over measure.py (the reference needs torch, so this lives
outside the torch-free runtime)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import run_cli

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=CONTEXT)
@click.argument("model_paths", metavar="MODEL.onnx [MORE.onnx ...]", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("--reference", type=click.Path(exists=True, dir_okay=False),
              help="Checkpoint of the same weights: also time the original PyTorch generate "
                   "(recompute the last window per token) and print each speed-up. Needs torch.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Thread count measured besides 1.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def bench_command(model_paths, reference, threads, repeats, as_json):
    """Benchmark exported models: load, decode, prefill, batch throughput, memory, cold start."""
    import dataclasses
    import json
    import os
    import platform

    try:
        import onnxruntime
    except ImportError:  # 32-bit Pi OS: no wheel; mixer-run --stats measures the numpy backend
        raise click.UsageError("mixer-bench measures onnxruntime, which is not installed here; on a board "
                               "without it use: mixer-run MODEL.onnx -p TEXT --stats") from None

    from .measure import NEW_TOKENS, Stat, bench_model, reference_tokens_per_s
    results = [bench_model(p, threads, repeats) for p in model_paths]
    refs = {}
    if reference:  # the original at the same thread counts as the runner: 1, and --threads
        for th in sorted({1, threads}):
            refs[f"reference_{th}t"] = Stat.of([reference_tokens_per_s(reference, threads=th)
                                               for _ in range(max(1, repeats // 2))])
        for r in results:
            for th in sorted({1, threads}):
                r[f"speedup_vs_reference_{th}t"] = r[f"decode_tokens_per_s_{th}t"].median / refs[f"reference_{th}t"].median
            for name in ("halve", "halve_t0.8"):  # 3,000 bytes, one thread: greedy, and at 0.8 beside it
                r[f"speedup_3000_{name}_vs_reference_1t"] = (r[f"decode_3000_{name}_tokens_per_s"].median
                                                             / refs["reference_1t"].median)
    env = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
           "python": platform.python_version(), "new_tokens": NEW_TOKENS}
    if as_json:
        plain = lambda v: dataclasses.asdict(v) if isinstance(v, Stat) else v  # noqa: E731
        doc = {"environment": env, **{f"{k}_tokens_per_s": plain(v) for k, v in refs.items()},
               "models": [{k: plain(v) for k, v in r.items()} for r in results]}
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(" | ".join(f"{k}: {v}" for k, v in env.items()))
    for name, ref in refs.items():
        click.echo(f"{name}: original PyTorch generate on {reference}, torch and onnxruntime both at "
                   f"{name.split('_')[1][:-1]} thread(s): {ref} tokens/s")
    keys = [k for k in results[0] if k != "model"]
    width = max(map(len, keys)) + 2  # (the longest name, decode_3000_tokens_per_s_2t, set the columns apart)
    click.echo(f"{'':<{width}}" + "".join(f"{Path(r['model']).name:>34}" for r in results))
    for k in keys:
        cells = [f"{v:,.2f}" if isinstance(v, float) else str(v) for v in (r.get(k) for r in results)]
        click.echo(f"{k:<{width}}" + "".join(f"{c:>34}" for c in cells))
    click.echo("median [min-max] over repeats; tokens/s are bytes/s")


def main():
    sys.exit(run_cli(bench_command))


if __name__ == "__main__":
    main()
