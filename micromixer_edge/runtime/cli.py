"""mixer-run and mixer-eval: thin click layers over the runtime library (no torch)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..errors import run_cli
from ..format import BACKENDS, CONTEXT_MODES, DEFAULT_BACKEND, DEFAULT_CONTEXT_MODE

CONTEXT = {"help_option_names": ["-h", "--help"]}
MODEL_ARG = click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
BACKEND_OPT = click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
                           help="onnxruntime, or numpy alone (boards without onnxruntime); auto picks "
                                "onnxruntime when installed.")


def _read_stdin_prompt() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError as e:
        raise click.UsageError(f"stdin is not valid UTF-8 (byte {e.start})") from None


def _print_stream(pieces, interval: float = 0.05) -> None:
    """Write text as it comes, flushing at most every `interval` seconds: a flush per byte would be
    a system call per token (~0.7 us of a ~70 us step), and 20 updates a second look continuous."""
    out, last = sys.stdout, time.monotonic()
    for piece in pieces:
        out.write(piece)
        now = time.monotonic()
        if now - last >= interval:
            out.flush()
            last = now
    out.flush()


def _stats_line(stats) -> str:
    return (f"prefill {stats.prompt_tokens} tokens in {stats.prefill_s * 1e3:.1f} ms | "
            f"{stats.new_tokens} tokens generated at {stats.tokens_per_s:.0f} tokens/s")


@click.command(context_settings=CONTEXT)
@MODEL_ARG
@click.option("--prompt", "-p", help="Prompt text; '-' reads it from stdin. Omit on a terminal for interactive mode.")
@click.option("--max-new-tokens", "-n", type=int, default=256, show_default=True, help="Bytes to generate at most.")
@click.option("--temperature", "-t", type=float, default=0.8, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=40, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=0.95, show_default=True, help="1 = off.")
@click.option("--min-p", type=float, default=0.05, show_default=True, help="0 = off.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--repeat-last-n", type=int, default=64, show_default=True, help="Window of the repetition penalty.")
@click.option("--seed", type=int, help="Seed of the sampler [default: random].")
@click.option("--stop", multiple=True, help="Stop when this string is generated (repeatable).")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--context", "context_mode", type=click.Choice(CONTEXT_MODES), default=DEFAULT_CONTEXT_MODE,
              show_default=True, help="Past max_seq_len: halve (re-fold the last half), window (the "
                                      "original's exact behaviour), unbounded (never reset).")
@click.option("--ignore-eos", is_flag=True, help="Never stop at the end-of-sequence token.")
@click.option("--echo", is_flag=True, help="Print the prompt before the generated text.")
@click.option("--stats", is_flag=True, help="Print prefill time and tokens/s to stderr.")
@BACKEND_OPT
@click.option("--selftest", is_flag=True,
              help="Check this device against the greedy bytes stored in the file at export; "
                   "prints PASS/FAIL, tokens/s, CPU and onnxruntime version.")
def run_command(model_path, prompt, threads, echo, stats, backend, selftest, **kw):
    """Generate text with an exported MicroMixer model (byte-level sampling, onnxruntime)."""
    from .api import load_model, options_from
    from .selftest import slow_path_note
    if selftest:
        from .selftest import run_selftest
        model = load_model(model_path, threads, backend)
        result = run_selftest(model)
        click.echo(result.line())
        if slow_path_note(model):
            click.echo(slow_path_note(model))
        if not result.passed:
            raise SystemExit(1)
        return
    if prompt == "-":
        prompt = _read_stdin_prompt()
    options = options_from(**kw)  # validates before the (slower) model load
    if prompt is not None and not prompt:
        raise click.UsageError("the prompt is empty; give text with -p, or -p - to read stdin")
    model = load_model(model_path, threads, backend)
    if slow_path_note(model):
        click.echo(slow_path_note(model), err=True)
    if prompt is None:
        if not sys.stdin.isatty():
            raise click.UsageError("no prompt: give -p TEXT, or -p - to read stdin")
        return _interactive(model, options, stats)
    _generate_once(model, prompt, options, echo, stats)


def _generate_once(model, prompt, options, echo, show_stats):
    from .generate import GenerationStats, stream
    if echo:
        sys.stdout.write(prompt)
    st = GenerationStats()
    _print_stream(stream(model, prompt, options, st))
    sys.stdout.write("\n")
    sys.stdout.flush()
    if show_stats:
        click.echo(_stats_line(st), err=True)


def _interactive(model, options, show_stats):
    """Each line is a new prompt; an empty line continues the previous text."""
    from .generate import GenerationStats, stream
    click.echo("interactive: type a prompt and Enter; an empty line continues; Ctrl-D quits", err=True)
    text = ""
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        text = text if not line else line
        if not text:
            continue
        st = GenerationStats()
        for piece in stream(model, text, options, st):
            sys.stdout.write(piece)
            sys.stdout.flush()
            text += piece
        sys.stdout.write("\n")
        if show_stats:
            click.echo(_stats_line(st), err=True)


@click.command(context_settings=CONTEXT)
@MODEL_ARG
@click.option("--text", "text_path", type=click.Path(), required=True,
              help="UTF-8 text, stories separated by blank lines (e.g. TinyStories valid.txt).")
@click.option("--context", "contexts", type=click.Choice(CONTEXT_MODES + ("all",)), default=DEFAULT_CONTEXT_MODE,
              show_default=True, help="Context mode(s) to measure.")
@click.option("--min-bytes", type=int, default=0, show_default=True,
              help="Only stories at least this long (e.g. longer than max_seq_len).")
@click.option("--limit", type=int, help="At most this many stories.")
@click.option("--threads", type=int, default=1, show_default=True)
@BACKEND_OPT
def eval_command(model_path, text_path, contexts, min_bytes, limit, threads, backend):
    """Bits per byte (and tokens/s) of a model on a text."""
    from .api import load_model
    from .evaluate import bits_per_byte, read_stories
    model = load_model(model_path, threads, backend)
    stories = [s for s in read_stories(text_path) if len(s) >= min_bytes][:limit]
    if not stories:
        raise click.UsageError(f"{text_path}: no story of at least {min_bytes} bytes")
    modes = CONTEXT_MODES if contexts == "all" else (contexts,)
    click.echo(f"{model_path}: {len(stories)} stories, {sum(map(len, stories)):,} bytes")
    for mode in modes:
        r = bits_per_byte(model, stories, mode)
        click.echo(f"  context {mode:>9}: {r.bits_per_byte:.4f} bits/byte  {r.tokens_per_s:,.0f} tokens/s")


def main():
    sys.exit(run_cli(run_command))


def eval_main():
    sys.exit(run_cli(eval_command))


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

    import onnxruntime

    from .bench import NEW_TOKENS, Stat, bench_model, reference_tokens_per_s
    results = [bench_model(p, threads, repeats) for p in model_paths]
    refs = {}
    if reference:  # as a user runs the original (torch's default threads), and at 1 thread
        for name, th in (("reference", None), ("reference_1t", 1)):
            refs[name] = Stat.of([reference_tokens_per_s(reference, threads=th) for _ in range(max(1, repeats // 2))])
        for r in results:
            for name, ref in refs.items():
                r[f"speedup_vs_{name}"] = r["decode_tokens_per_s_1t"].median / ref.median
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
        threads_used = "1 torch thread" if name.endswith("1t") else "torch's default threads"
        click.echo(f"{name}: original PyTorch generate on {reference}, {threads_used}: {ref} tokens/s")
    keys = [k for k in results[0] if k != "model"]
    click.echo(f"{'':<26}" + "".join(f"{Path(r['model']).name:>34}" for r in results))
    for k in keys:
        cells = [f"{v:,.2f}" if isinstance(v, float) else str(v) for v in (r.get(k) for r in results)]
        click.echo(f"{k:<26}" + "".join(f"{c:>34}" for c in cells))
    click.echo("median [min-max] over repeats; tokens/s are bytes/s")


def bench_main():
    sys.exit(run_cli(bench_command))
