"""mixer-run and mixer-eval: thin click layers over the runtime library (no torch)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..errors import EXIT_ERROR, run_cli
from ..format import BACKENDS, DEFAULT_BACKEND
from .engine import GenerateOptions
from .sampling import SamplingParams
from .context import CONTEXT_MODES, DEFAULT_CONTEXT_MODE

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


def _logit_bias(pairs) -> tuple | None:
    """('10:-100', ...) -> ((10, -100.0), ...); a malformed pair is a usage error."""
    out = []
    for pair in pairs:
        byte, _, bias = pair.partition(":")
        try:
            out.append((int(byte), float(bias)))
        except ValueError:
            raise click.BadParameter(f"{pair!r} is not BYTE:BIAS (e.g. 10:-100)", param_hint="--logit-bias") from None
    return tuple(out) or None


def _constraint(json_schema, regex, choices, grammar):
    """The one structured-output flag given (a usage error for two), checked before the model loads."""
    from .constraint import Constraint
    given = [name for name, v in (("--json-schema", json_schema), ("--regex", regex), ("--choice", choices),
                                  ("--grammar", grammar)) if v not in (None, ())]
    if len(given) > 1:
        raise click.UsageError(f"give one structured-output flag, not {' and '.join(given)}")
    if json_schema:
        constraint = Constraint.json_schema(_read_text(json_schema, "--json-schema"))
    elif regex is not None:
        constraint = Constraint.regex(regex)
    elif choices:
        constraint = Constraint.choice(choices)
    elif grammar:
        constraint = Constraint.grammar(_read_text(grammar, "--grammar"), "lark" if grammar.endswith(".lark") else "grammar")
    else:
        return None
    constraint.compile()  # (a MixerError names what is wrong: one line, exit 1)
    return constraint


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint=flag) from None


def _field_flag(cls, *decls: str, help: str):
    """An option for a field of `cls` (GenerateOptions, SamplingParams): its type and the default
    shown in --help come from the field; unset, it is None and the field's own default applies."""
    name = decls[0].removeprefix("--").replace("-", "_")
    default = getattr(cls, name)
    return click.option(*decls, name, type=type(default), default=None, help=f"{help}  [default: {default}]")


def _stats_line(stats) -> str:
    return (f"prefill {stats.prompt_tokens} tokens in {stats.prefill_s * 1e3:.1f} ms | "
            f"{stats.new_tokens} tokens generated at {stats.tokens_per_s:.0f} tokens/s")


@click.command(context_settings=CONTEXT)
@MODEL_ARG
@click.option("--prompt", "-p", help="Prompt text; '-' reads it from stdin. Omit on a terminal for interactive mode.")
@_field_flag(GenerateOptions, "--max-new-tokens", "-n", help="Bytes to generate at most.")
@_field_flag(SamplingParams, "--temperature", "-t", help="0 = greedy.")
@_field_flag(SamplingParams, "--top-k", help="0 = off.")
@_field_flag(SamplingParams, "--top-p", help="1 = off.")
@_field_flag(SamplingParams, "--min-p", help="0 = off.")
@_field_flag(SamplingParams, "--repetition-penalty", help="1 = off.")
@_field_flag(SamplingParams, "--repeat-last-n", help="Window of the repetition penalty.")
@_field_flag(SamplingParams, "--presence-penalty", help="OpenAI's: minus this from every byte generated so far.")
@_field_flag(SamplingParams, "--frequency-penalty", help="OpenAI's: minus this times each byte's count so far.")
@click.option("--logit-bias", "logit_bias", multiple=True, metavar="BYTE:BIAS",
              help="Add BIAS (-100 to 100) to byte BYTE's logit, e.g. 10:-100 never writes a newline "
                   "(repeatable).")
@click.option("--seed", type=int, help="Seed of the sampler [default: random; with --load-state, the saved "
                                       "generator goes on, and --seed starts it afresh].")
@click.option("--stop", multiple=True, help="Stop when this string is generated (repeatable).")
@click.option("--json-schema", "json_schema", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Structured output: the text is JSON valid under the JSON schema in FILE (compact; "
                   "numbers the schema leaves unbounded get at most 15 digits and 6 decimals).")
@click.option("--regex", help="Structured output: the text matches this regular expression (whole).")
@click.option("--choice", "choices", multiple=True, help="Structured output: the text is one of these "
                                                         "strings (repeatable).")
@click.option("--grammar", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Structured output: the text is in the grammar in FILE (GBNF, as llama.cpp's; Lark if "
                   "FILE ends in .lark). Needs the structured extra, as the three above.")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--context", "context", type=click.Choice(CONTEXT_MODES), default=DEFAULT_CONTEXT_MODE,
              show_default=True, help="Past max_seq_len: halve (re-fold the last half), window (the "
                                      "original's exact behaviour), unbounded (never reset).")
@click.option("--ignore-eos", is_flag=True, help="Never stop at the end-of-sequence token.")
@click.option("--echo", is_flag=True, help="Print the prompt before the generated text.")
@click.option("--stats", is_flag=True, help="Print prefill time and tokens/s to stderr.")
@BACKEND_OPT
@click.option("--save-state", type=click.Path(dir_okay=False),
              help="After generating, write the row's state here (resume it with --load-state).")
@click.option("--load-state", type=click.Path(dir_okay=False),
              help="Go on from a --save-state file (of this model); -p then adds text to it. Prints "
                   "what it adds (the -p text, then the new text), not the earlier text.")
@click.option("--selftest", is_flag=True,
              help="Check this device against the greedy bytes stored in the file at export; "
                   "prints PASS/FAIL, tokens/s, CPU and onnxruntime version.")
def run_command(model_path, prompt, threads, echo, stats, backend, selftest, save_state, load_state, **kw):
    """Generate text with an exported MicroMixer model (byte-level sampling, onnxruntime)."""
    from .model import MixerModel
    from .selftest import slow_path_note
    if selftest:
        from .selftest import run_selftest
        model = MixerModel(model_path, threads, backend)
        result, note = run_selftest(model), slow_path_note(model)
        click.echo(result.line())
        if note:
            click.echo(note)
        if not result.passed:
            raise SystemExit(EXIT_ERROR)
        return
    if prompt == "-":
        prompt = _read_stdin_prompt()
    # only what the user set: every default is GenerateOptions' and SamplingParams' own
    kw["logit_bias"] = _logit_bias(kw["logit_bias"])
    kw["constraint"] = _constraint(kw.pop("json_schema"), kw.pop("regex"), kw.pop("choices"), kw.pop("grammar"))
    options = GenerateOptions.of(**{k: v for k, v in kw.items() if v is not None})
    if prompt is not None and not prompt and not load_state:
        raise click.UsageError("the prompt is empty; give text with -p, or -p - to read stdin")
    if save_state:
        from .._files import check_output_path
        check_output_path(save_state, model_path)
    state = Path(load_state).read_bytes() if load_state else None
    model = MixerModel(model_path, threads, backend)
    note = slow_path_note(model)
    if note:
        click.echo(note, err=True)
    if state is not None or save_state:
        return _generate_once(model, prompt or "", options, echo, stats, state, save_state)
    if prompt is None:
        if not sys.stdin.isatty():
            raise click.UsageError("no prompt: give -p TEXT, or -p - to read stdin")
        return _interactive(model, options, stats)
    _generate_once(model, prompt, options, echo, stats)


def _generate_once(model, prompt, options, echo, show_stats, state=None, save_state=None):
    """One prompt (or a resumed state, plus the prompt's bytes); optionally save the state after.
    A resumed story prints the text it adds (the prompt, then what is generated): its earlier text
    is in the state, not repeated, which stderr says."""
    from .engine import Engine, GenerationStats
    from ..codec import utf8
    if state is not None:
        click.echo("(going on from the saved state: its earlier text is not repeated; new text follows)", err=True)
    if echo or state is not None:
        sys.stdout.write(prompt)
    st, engine = GenerationStats(), Engine(model)
    if state is not None:
        row = engine.restore(state, options, list(utf8(prompt)), st, reseed=True)  # (--seed starts afresh)
    else:
        row = engine.add(prompt, options, st)
    _print_stream(piece for _, piece in engine.run())
    sys.stdout.write("\n")
    sys.stdout.flush()
    row.check()  # (a failed row: one line on stderr, exit 1)
    if save_state:
        from .._files import atomic_output
        with atomic_output(save_state) as tmp:
            Path(tmp).write_bytes(engine.snapshot(row))
    if show_stats:
        click.echo(_stats_line(st), err=True)


def _interactive(model, options, show_stats):
    """A line starts a new story (printed from its prompt on); an empty line goes on with the last
    one (its last words shown, then the new text); Ctrl-C stops the story being written, Ctrl-D
    quits."""
    click.echo("interactive: type a prompt and Enter to start a story; an empty line goes on with "
               "the last one; Ctrl-C stops a story; Ctrl-D quits", err=True)
    text, ended = "", None
    while True:
        telling = False
        try:
            line = input("> ")
            telling = bool(line) or bool(text and not ended)
            if line:
                text, ended = line, None
                sys.stdout.write(text)
            elif not text or ended:
                click.echo(f"(that story {ended}: type a new prompt)" if text else "(type a prompt first)", err=True)
                continue
            else:
                sys.stdout.write("..." + text[-60:].rsplit("\n", 1)[-1])  # where the new text goes on
            text, ended = _tell(model, text, options, show_stats)
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell gives; else the story stops
            sys.stdout.write(" [stopped]\n" if telling else "\n")


def _tell(model, text: str, options, show_stats) -> tuple[str, str | None]:
    """Write the story's continuation as it comes; (the text now, how the story ended: "ended" at
    end-of-story, "stopped at a --stop string", or None: it may go on)."""
    from .engine import Engine, Finish, GenerationStats
    from ..errors import MixerError
    st, engine, row = GenerationStats(), Engine(model), None
    try:
        row = engine.add(text, options, st)
        for _, piece in engine.run():
            sys.stdout.write(piece)
            sys.stdout.flush()
            text += piece
        row.check()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    except MixerError as e:  # (a line that is not text: this prompt alone)
        click.echo(f"\nerror: {e}", err=True)
        return "", None
    ended = None
    if row is not None and row.finish_reason == Finish.STOP:
        ended = "stopped at a --stop string" if row.text.stopped else "ended"
    sys.stdout.write("\n" + ("[the end]\n" if ended == "ended" else ""))
    sys.stdout.flush()
    if show_stats:
        click.echo(_stats_line(st), err=True)
    return text, ended


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
    from .model import MixerModel
    from ..codec import read_stories
    from .evaluate import bits_per_byte
    model = MixerModel(model_path, threads, backend)
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


if __name__ == "__main__":
    main()
