"""The one decode loop: rows join, step together in one onnxruntime call, and leave.

Every caller stands on it: `stream`/`generate`/`generate_batch`, the self-test, `mixer-run`, the
server. A row owns its prompt, sampler (its own seeded generator), stop strings, limits, context
mode and UTF-8 text stream, so its bytes are the same whether it runs alone or beside others: the
graph's rows are independent, and the default int8 is too (docs/format.md).

Past max_seq_len (W), each row follows its context mode (runtime/context.py: where the mode
re-folds and what it keeps): a row at its boundary re-folds in one call of its own, alone or in a
batch (halve: W/2 + 1 tokens every W/2 bytes, a few ms on x86). A lone row once folded the kept
tokens ahead of time in a second "shadow" slot instead, so as never to pause; that made every call
past W/2 one of two rows, and measured no faster than the re-fold (docs/performance.md).
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MixerError
from ..codec import encode_prompt
from ..format import EOS_ID
from . import snapshot
from .context import DEFAULT_CONTEXT_MODE, MODES, ContextMode, context_mode
from .state import State
from .sampling import Sampler, SamplingParams, sample_rows, seed_value
from .textstream import TextStream

if TYPE_CHECKING:
    from .model import MixerModel

FOLD_CHUNK = 4096  # unbounded prompts fold in calls of this many tokens


@dataclasses.dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ids: list[int] = dataclasses.field(default_factory=list)  # the generated token ids

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = 256
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    context: str = DEFAULT_CONTEXT_MODE

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise MixerError("max new tokens must be >= 0")
        context_mode(self.context)  # a known name

    @classmethod
    def of(cls, max_new_tokens: int | None = None, seed: int | None = None, stop=(), context: str = DEFAULT_CONTEXT_MODE,
           **sampling) -> "GenerateOptions":
        """From flat keyword arguments (the CLI's flags, the one-line API's): sampling ones are
        SamplingParams' fields; `stop` is a string or a sequence of them."""
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        max_new_tokens = cls.max_new_tokens if max_new_tokens is None else max_new_tokens
        return cls(max_new_tokens=max_new_tokens, sampling=SamplingParams(**sampling), seed=seed,
                   stop=stop, context=context)


def fold(model: MixerModel, new: list[int], mode: str, state: State | None = None,
         history: list[int] = ()) -> tuple[np.ndarray | None, State]:
    """Fold tokens into one row: the (last logits (V,), state) that feeding `new` token by token
    under `mode` would give, after `history` (the row's latest tokens) made `state`.

    A mode's re-folds make the state depend on a suffix of the tokens only (ContextMode.suffix),
    so a long prompt costs O(W) in a bounded mode; unbounded folds everything, in calls of
    FOLD_CHUNK tokens.
    """
    pos = int(state.position[0]) if state is not None else 0
    keep = context_mode(mode).suffix(pos, len(new), model.max_seq_len)
    if keep is not None:
        new, state = (list(history) + list(new))[-keep:], None
        if len(new) < keep:
            raise MixerError(f"{mode} needs the last {keep} tokens of the row; it has {len(new)}")
    state = state if state is not None else model.new_state(1)
    logits = None
    for i in range(0, len(new), FOLD_CHUNK):
        logits, state = model.run(np.asarray([new[i:i + FOLD_CHUNK]], np.int64), state)
    return (None if logits is None else logits[0, -1].copy()), state


@dataclasses.dataclass(eq=False)
class Row:
    """One sequence in the engine. `pieces` collects text not yet taken by the caller."""
    options: GenerateOptions
    sampler: Sampler
    text: TextStream
    stats: GenerationStats
    history: list[int]                 # latest tokens (window and halve re-fold from them)
    recent: list[int]                  # latest tokens for the repetition penalty
    logits: np.ndarray | None = None   # next-token logits, waiting to be sampled
    sums: np.ndarray | None = None     # (L, H) while not in a slot; the engine owns it otherwise
    position: int = 0
    finish_reason: str | None = None   # "stop" (eos or stop string), "length", "cancelled", "error"
    error: str | None = None           # what failed, when finish_reason is "error"
    last: int | None = None            # the latest sampled token (folded in on the next step)
    unfolded: bool = False             # `last` is not in the state yet
    mode: ContextMode | None = None    # options.context's mode (looked up once)
    event: float = 0                   # the position at which the mode re-folds (inf: never)
    pieces: list[str] = dataclasses.field(default_factory=list)
    id: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def take_text(self) -> str:
        """The text made since the last call ("" if none): what a caller streams out."""
        text = "".join(self.pieces)
        self.pieces.clear()
        return text

    @property
    def usage(self) -> dict:
        """OpenAI's usage object: prompt tokens (bos and bytes), generated tokens, their sum."""
        prompt, new = self.stats.prompt_tokens, self.stats.new_tokens
        return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


class Engine:
    """Owns a model and its live rows; `step()` advances every live row by one byte in one call."""

    def __init__(self, model: MixerModel):
        self.model, self.W = model, model.max_seq_len
        for mode in MODES.values():
            mode.check(self.W)
        self.rows: list[Row] = []
        self._ids = itertools.count()
        self._stepper = None
        self._slots: list[Row] = []  # the row of each stepper row (the live rows when it was built)

    # --- joining and leaving -----------------------------------------------------------------
    def add(self, prompt: str | bytes, options: GenerateOptions = GenerateOptions(),
            stats: GenerationStats | None = None) -> Row:
        """Prefill a prompt ([bos] + utf8) and join the live rows."""
        row = self.new_row(options, stats)
        self.prefill(row, prompt)
        return self.join(row)

    def prefill(self, row: Row, prompt: str | bytes) -> None:
        """Fold a new row's prompt ([bos] + utf8). It touches that row and the model alone, never
        the live rows: a server may run it on another thread while steps go on (onnxruntime's
        Run is thread-safe), then `join` the row."""
        self.extend(row, encode_prompt(prompt))

    def extend(self, row: Row, ids: list[int], prompt: bool = True) -> None:
        """Fold more tokens into a row that is not stepping (a new one, or a resumed snapshot);
        prompt=False folds a generated token (already in the repetition window and the stats)."""
        t0, mode = time.perf_counter(), row.options.context
        state = None if row.sums is None else State(row.sums[:, None].copy(), np.array([row.position]))
        logits, state = fold(self.model, ids, mode, state, row.history)
        if logits is not None:
            row.logits = logits
        row.sums, row.position = state.sums[:, 0].copy(), int(state.position[0])
        row.history = (row.history + list(ids))[-self.W:]
        if prompt and row.options.sampling.repeat_last_n:
            row.recent = (row.recent + list(ids))[-row.options.sampling.repeat_last_n:]
        if prompt:
            row.stats.prompt_tokens += len(ids)
            row.stats.prefill_s += time.perf_counter() - t0

    def new_row(self, options: GenerateOptions, stats: GenerationStats | None = None) -> Row:
        """A row with nothing folded yet (prefill or restore it, then join)."""
        mode = context_mode(options.context)
        return Row(options, Sampler(options.sampling, options.seed), TextStream(options.stop),
                   stats if stats is not None else GenerationStats(), [], [], mode=mode,
                   event=mode.boundary(self.W), id=next(self._ids))

    def join(self, row: Row) -> Row:
        """The row joins the live rows (or ends at once: max_new_tokens 0)."""
        if row.options.max_new_tokens == 0:
            row.finish_reason = "length"
            return row
        self._detach()
        self.rows.append(row)
        return row

    def cancel(self, row: Row) -> None:
        """Leave between steps; the row keeps what it generated."""
        if not row.done:
            row.finish_reason = "cancelled"
        if row in self.rows:
            self._detach()
            self.rows.remove(row)

    # --- the live rows as the rows of one IO-bound stepper -----------------------------------
    def _detach(self) -> None:
        """Copy the stepper's state back into the rows; the next step builds a new one."""
        if self._stepper is None:
            return
        st = self._stepper.state
        for i, row in enumerate(self._slots):
            row.sums, row.position = st.sums[:, i].copy(), int(st.position[i])
        self._stepper, self._slots = None, []

    def _attach(self) -> None:
        self._slots = list(self.rows)
        self._stepper = self.model.stepper(len(self._slots))
        st = self._stepper.state
        for i, row in enumerate(self._slots):
            st.sums[:, i], st.position[i] = row.sums, row.position

    # --- one step ----------------------------------------------------------------------------
    def step(self) -> list[Row]:
        """Sample one byte for every live row and fold it in (one call); returns the rows that
        produced text or finished (see their `pieces` and `finish_reason`)."""
        if not self.rows:
            return []
        t0, touched, finished, rows = time.perf_counter(), [], False, self.rows
        logits = np.stack([r.logits for r in rows])  # (B, V): one sampling pass for every row
        tokens = sample_rows([r.sampler for r in rows], logits, [r.recent for r in rows])
        for row, token in zip(rows, tokens):
            try:  # a row's own failure ends that row alone (finish_reason "error")
                if isinstance(token, Exception):
                    raise token
                row.last = self._accept(row, token)
            except Exception as e:  # noqa: BLE001
                self.fail(row, e)
            if row.pieces or row.finish_reason:
                touched.append(row)
                finished = finished or row.finish_reason is not None
        if finished:
            self._detach()
            self.rows = [r for r in rows if r.finish_reason is None]
        if self.rows:
            try:
                failed = self._feed()
            except Exception as e:  # noqa: BLE001 - the shared call: its rows end, finished ones stay finished
                failed = self.abort(e)
            touched += [r for r in failed if r not in touched]
        dt = (time.perf_counter() - t0) / len(rows)
        for row in rows:
            row.stats.decode_s += dt
        return touched

    def fail(self, row: Row, e: BaseException) -> None:
        """End a row with an error (it leaves before the next step); the other rows go on."""
        row.finish_reason, row.error = "error", f"{type(e).__name__}: {e}"

    def abort(self, e: BaseException) -> list[Row]:
        """A step failed as a whole: every live row ends with the error, and the engine is empty."""
        rows, self.rows, self._stepper, self._slots = self.rows, [], None, []
        for row in rows:
            self.fail(row, e)
        return rows

    def _sample(self, row: Row) -> int:
        return self._accept(row, row.sampler.sample(row.logits, row.recent))

    def _accept(self, row: Row, token: int) -> int:
        """The row's sampled byte: stats, repetition window, text, and whether the row ends."""
        opts = row.options
        if token == EOS_ID and not opts.sampling.ignore_eos:
            row.finish_reason = "stop"
            self._finish_text(row)
            return token
        row.unfolded = True
        row.sampler.accepted(token)
        row.stats.ids.append(token)
        row.stats.new_tokens += 1
        if opts.sampling.repeat_last_n:
            row.recent.append(token)
            if len(row.recent) > 2 * opts.sampling.repeat_last_n:
                del row.recent[:-opts.sampling.repeat_last_n]
        piece = row.text.push(bytes((token,)))
        if piece:
            row.pieces.append(piece)
        if row.text.stopped:
            row.finish_reason = "stop"
        elif row.stats.new_tokens >= opts.max_new_tokens:
            row.finish_reason = "length"
        if row.finish_reason is not None:
            self._finish_text(row)
        return token

    @staticmethod
    def _finish_text(row: Row) -> None:
        tail = row.text.finish()
        if tail:
            row.pieces.append(tail)

    def _feed(self) -> list[Row]:
        """Fold each live row's new token: one call for all, plus window re-folds past W. Returns
        the rows whose own re-fold failed (they leave)."""
        rows, failed = self.rows, []
        refold = self._boundaries() if any(r.position >= r.event for r in rows) else {}
        if self._stepper is None:
            self._attach()
        logits = self._stepper.step([r.last for r in rows]).copy()  # (B, V), one copy
        for i, row in enumerate(rows):
            try:
                if i in refold:
                    row.logits, row.position = self._refold(i, row, refold[i]), refold[i] + 1
                else:
                    row.logits, row.position = logits[i], row.position + 1
            except Exception as e:  # noqa: BLE001 - this row's re-fold: the others keep theirs
                self.fail(row, e)
                failed.append(row)
            row.unfolded = False
            self._remember(row)
        if failed:
            self._detach()
            self.rows = [r for r in rows if r.finish_reason is None]
        return failed

    def _remember(self, row: Row) -> None:
        """A bounded mode keeps the latest tokens, which it may re-fold (trimmed now and then)."""
        if row.event <= self.W:  # (a bounded mode's event is never past W)
            row.history.append(row.last)
            if len(row.history) > 2 * self.W:
                del row.history[:-self.W]

    def _boundaries(self) -> dict[int, int]:
        """Rows at their mode's boundary: {row index: tokens its re-fold keeps before the new one}."""
        return {i: row.mode.keep(self.W) for i, row in enumerate(self.rows) if row.position >= row.event}

    def _refold(self, i: int, row: Row, keep: int) -> np.ndarray:
        """The last `keep` tokens and the new one, from position 0, in one call (a re-fold)."""
        block = np.asarray([row.history[-keep:] + [row.last]], np.int64)
        logits, st = self.model.prefill(block)
        self._stepper.state.set_rows([i], st)
        return logits[0, -1]

    # --- snapshots: a row as bytes, resumed or forked -----------------------------------------
    def snapshot(self, row: Row) -> bytes:
        """The row as bytes (see runtime/snapshot.py), its last generated byte folded in first."""
        if row in self.rows:
            self._detach()
        if row.unfolded:
            self.extend(row, [row.last], prompt=False)
            row.unfolded = False
        cfg, (version, mt, gauss) = self.model.config, row.sampler.rng.getstate()
        header = {"model_sha256": self.model.sha256, "num_layers": cfg.num_layers, "hidden_dim": cfg.hidden_dim,
                  "context": row.options.context, "position": row.position, "history": row.history,
                  "recent": row.recent, "rng": [version, list(mt), gauss],
                  "counts": sorted(row.sampler.counts.items()),
                  "shadow_position": None}  # (no longer written; a reader may ignore it)
        arrays = {"sums": row.sums, "logits": row.logits}
        return snapshot.encode(header, arrays)

    def restore(self, data: bytes, options: GenerateOptions = GenerateOptions(), more: list[int] = (),
                stats: GenerationStats | None = None) -> Row:
        """A new row from a snapshot (its context mode wins over `options`), with `more` tokens
        folded in (no bos), joined to the live rows."""
        header, arrays = snapshot.decode(data)
        snapshot.check_model(header, self.model.sha256, self.model.config)
        row = self.new_row(dataclasses.replace(options, context=header["context"]), stats)
        row.sums, row.position, row.logits = arrays["sums"], int(header["position"]), arrays["logits"]
        row.history, row.recent = list(header["history"]), list(header["recent"])
        # a snapshot written with a halve shadow (shadow_sums): the row's own sums are complete
        version, mt, gauss = header["rng"]
        row.sampler.rng.setstate((version, tuple(mt), gauss))
        for token, times in header.get("counts", []):  # (none in snapshots before 0.2)
            row.sampler.accepted(int(token), int(times))
        if more:
            self.extend(row, list(more))
        return self.join(row)

    def fork(self, row: Row, options: GenerateOptions | None = None) -> Row:
        """Another continuation of a row's state without re-folding it; a seed in `options`
        re-seeds the fork's sampler (else it goes on from the row's random state)."""
        fork = self.restore(self.snapshot(row), options or row.options)
        if options is not None and options.seed is not None:
            fork.sampler.rng.seed(seed_value(options.seed))
        return fork

    def run(self):
        """Step until every row is done, yielding (row, piece) as text is made."""
        while self.rows:
            if len(self.rows) == 1 and self._stepper is not None and len(self._slots) == 1:
                yield from self._run_single()
                continue
            for row in self.step():
                while row.pieces:
                    yield row, row.pieces.pop(0)

    def _run_single(self):
        """The batch-1 hot path of run() (mixer-run's loop): `step` for one row with the
        bookkeeping inlined; boundaries and the row's end take the general path."""
        row, remember = self.rows[0], self._remember
        step_one = self._stepper.step_one
        sample, pieces, t0 = self._sample, row.pieces, time.perf_counter()
        try:
            while True:
                row.last = sample(row)
                while pieces:
                    yield row, pieces.pop(0)
                if row.finish_reason is not None or row.position >= row.event:
                    return self._leave_single(row)
                row.logits = step_one(row.last)
                row.unfolded, row.position = False, row.position + 1
                remember(row)
        finally:
            row.stats.decode_s += time.perf_counter() - t0

    def _leave_single(self, row: Row) -> None:
        """The single row finished, or reached its mode's boundary: the general path takes it."""
        if row.finish_reason is not None:
            self._detach()
            self.rows = []
        else:
            self._feed()
