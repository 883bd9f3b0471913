"""One thread owns the model and its engine: requests join between steps, every step is one call
for all live rows, and each row's pieces go back to its request's asyncio queue.

Nothing a request brings can stop the thread: a failure while preparing or stepping one row ends
that request with an error and the other rows go on; a failure of a whole step ends the rows of
that step. If the thread itself dies, every request gets an error, `dead` says why, and
`on_death` is called (mixer-serve then exits non-zero, for a supervisor to restart it)."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import sys
import threading
import time
import traceback

from ..errors import QueueFull, ShuttingDown
from ..runtime.engine import Engine, Finish, GenerateOptions, GenerationStats, Row
from ..codec import utf8
from ..format import BOS_ID
from ..runtime.logprobs import Entry
from ..runtime.snapshot import Snapshot
from .metrics import Metrics


@dataclasses.dataclass(frozen=True)
class Piece:
    """Text a row made since the last piece, and the logprob entries of that text."""
    text: str
    entries: list[Entry]


@dataclasses.dataclass(frozen=True)
class End:
    """A job's last item: why it ended (a Finish value), its counts, and what failed if it did."""
    reason: str
    stats: GenerationStats
    error: str | None = None
    state: bytes | None = None  # the row's snapshot at its end, when the request asked for it


@dataclasses.dataclass(eq=False)
class Job:
    prompt: str
    options: GenerateOptions
    out: asyncio.Queue          # Piece ... then one End
    aio: asyncio.AbstractEventLoop
    row: Row | None = None
    cancelled: bool = False
    ended: bool = False
    answered: bool = False      # something was posted: the first text goes out without waiting
    forks: list = dataclasses.field(default_factory=list)  # jobs forked from this one's prompt state
    resume: Snapshot | None = None  # the state its prompt folds after (no bos), instead of bos
    return_state: bool = False      # its End carries the row's snapshot

    @property
    def rows(self) -> int:
        """The rows this job and its forks take."""
        return 1 + len(self.forks)



FLUSH_SECONDS = 0.02  # text reaches the event loop at most 50 times a second: one wake-up for all rows
# A prompt that folds more tokens than this (an unbounded one: bounded modes fold at most W) is
# folded on the prefill thread while the steps go on: 64 KB at ~24 us a token would stop every
# stream for 1.5 s. Shorter ones fold at once, between two steps (their first byte comes sooner).
INLINE_PREFILL_TOKENS = 1024


def _deliver(items) -> None:
    for job, item in items:
        job.out.put_nowait(item)


class DecodeLoop:
    def __init__(self, engine: Engine, max_batch: int, max_queue: int, metrics: Metrics, on_death=None):
        self.engine, self.max_batch, self.max_queue, self.metrics = engine, max_batch, max_queue, metrics
        self.on_death, self.dead = on_death, None  # dead: why the thread died (None while it runs)
        metrics.watch(self.counts)
        metrics.watch_cache(engine.cache)
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}   # row id -> job, for live rows
        self._cancel: list[Job] = []
        self._wake = threading.Condition()
        self._running, self.accepting = True, True
        self._outbox: list = []   # (job, item) waiting for the next flush
        self._admitting: list[Job] = []
        self._unforked = 0          # rows held for forks whose parent's prompt is still folding
        self._ready: list[tuple[Job, BaseException | None]] = []  # prefilled off-thread, to join
        self._prefiller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mixer-prefill")
        self._flushed, self._urgent = 0.0, False
        self._thread = threading.Thread(target=self._run, name="mixer-decode", daemon=True)

    # --- called from the event loop ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, choices: list[tuple[str | bytes, list[GenerateOptions]]], resume: Snapshot | None = None,
               return_state: bool = False) -> list[Job]:
        """Queue a request's choices, all or none: per prompt, one job that folds it (after the
        state `resume`, if given) and a fork of its state for each further choice. Returns the
        jobs in choice order."""
        aio, parents, jobs = asyncio.get_running_loop(), [], []
        for prompt, options in choices:
            group = [Job(prompt, o, asyncio.Queue(), aio, resume=resume, return_state=return_state) for o in options]
            group[0].forks = group[1:]
            parents.append(group[0])
            jobs += group
        with self._wake:
            if not self.accepting or self.dead:
                raise ShuttingDown()
            active, waiting = self._counts()
            # (what waits but fits in a free row is about to be admitted, not queued)
            if waiting + len(jobs) > self.max_queue + max(0, self.max_batch - active):
                raise QueueFull()
            self._waiting.extend(parents)
            self._wake.notify()
        return jobs

    def cancel(self, job: Job) -> None:
        """The client went away: its row leaves before the next step."""
        with self._wake:
            job.cancelled = True
            self._cancel.append(job)
            self._wake.notify()

    def counts(self) -> tuple[int, int]:
        """(rows taken, requests' choices waiting for a row)."""
        with self._wake:
            return self._counts()

    def _counts(self) -> tuple[int, int]:
        taken = len(self._jobs) + self._unforked + sum(j.rows for j in self._admitting)
        return taken, sum(j.rows for j in self._waiting)

    def end_all(self) -> None:
        """Shutdown: stop accepting, and end every live or waiting row after this step."""
        with self._wake:
            self.accepting = False
            self._cancel.extend(f for j in self._waiting for f in (j, *j.forks))
            self._waiting.clear()  # (so that none is admitted after being ended)
            self._cancel.extend(f for j in list(self._jobs.values()) for f in (j, *j.forks))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout=5)
        self._prefiller.shutdown(wait=False, cancel_futures=True)

    # --- the decode thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - a bug in the loop itself: fail loudly, not silently
            traceback.print_exc(file=sys.stderr)
            with self._wake:
                self.dead, self.accepting = f"{type(e).__name__}: {e}", False
                jobs = [f for j in self._admitting + list(self._waiting) + list(self._jobs.values())
                        for f in (j, *j.forks)]
                self._waiting.clear()
                self._jobs.clear()
            for job in jobs:
                if not job.ended:
                    job.ended = True
                    self._post(job, End(Finish.ERROR, _stats(job.row), f"the decode loop died ({self.dead})"))
            self._flush(force=True)
            if self.on_death is not None:
                self.on_death()

    def _serve(self) -> None:
        while True:
            if not self.engine.rows:
                self._flush(force=True)
            with self._wake:
                while self._running and not (self._waiting or self._cancel or self._ready or self.engine.rows):
                    self._wake.wait()
                if not self._running:
                    return
                cancel, self._cancel = self._cancel, []
                ready, self._ready = self._ready, []
                admit = self._admitting = []  # (taken from the queue: a death must still answer them)
                taken = self._counts()[0]
                while self._waiting and taken + self._waiting[0].rows <= self.max_batch:
                    admit.append(self._waiting.popleft())
                    taken += admit[-1].rows
            for job in cancel:
                self._end(job, Finish.CANCELLED if self.accepting else Finish.SHUTDOWN)
            for job in list(admit):
                self._admit(job)
            for job, error in ready:
                self._join(job, error)
            if self.engine.rows:
                self._step()
                self._flush()

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            touched = self.engine.step()
        except Exception as e:  # noqa: BLE001 - the shared call failed: its rows end, the loop goes on
            traceback.print_exc(file=sys.stderr)
            touched = self.engine.abort(e)
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        for row in touched:
            self._emit(self._jobs[row.id], row)  # each row once: engine.step never repeats one

    def _post(self, job: Job, item: Piece | End) -> None:
        self._outbox.append((job, item))
        if not job.answered or isinstance(item, End):  # first byte and last: flushed after this step
            job.answered, self._urgent = True, True

    def _flush(self, force: bool = False) -> None:
        """Hand the pending text to the event loop: one call_soon_threadsafe for every row, at
        most every FLUSH_SECONDS (a wake-up per row and byte would cost more than the step), and
        at once when a request gets its first text or its end."""
        now = time.perf_counter()
        if self._outbox and (force or self._urgent or now - self._flushed >= FLUSH_SECONDS):
            items, self._outbox, self._flushed, self._urgent = self._outbox, [], now, False
            try:
                items[0][0].aio.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is waiting
                pass

    def _admit(self, job: Job) -> None:
        """A row for the job; its prompt folds now, or on the prefill thread if it is long. It
        leaves `_admitting` in the same locked moment as it joins `_jobs`: counted once."""
        if job.ended or job.cancelled:
            with self._wake:
                self._admitting.remove(job)
            return None if job.ended else self._end(job, Finish.CANCELLED)
        job.row = self.engine.new_row(job.options)
        with self._wake:
            self._admitting.remove(job)
            self._jobs[job.row.id] = job  # it holds a row from now on (and its forks one each)
            self._unforked += len(job.forks)
        # (a character is at most 4 bytes; scoring a prompt folds all of it, O(W) a byte in window)
        short = job.row.mode.bounded(self.engine.W) or len(job.prompt) < INLINE_PREFILL_TOKENS // 4
        if short and not job.options.prompt_logprobs:
            return self._join(job, self._prefill(job))
        self._prefiller.submit(self._prefill_off_thread, job)

    def _prefill(self, job: Job) -> BaseException | None:
        try:
            if job.resume is not None:  # (a request's seed starts the generator afresh)
                more = job.prompt if isinstance(job.prompt, bytes) else utf8(job.prompt)
                more = more[1:] if more[:1] == bytes([BOS_ID]) and isinstance(job.prompt, bytes) else more  # (ids with bos)
                self.engine.load(job.row, job.resume, list(more), reseed=True)
            else:
                self.engine.prefill(job.row, job.prompt)
        except Exception as e:  # noqa: BLE001 - this request's preparation failed; the others go on
            traceback.print_exc(file=sys.stderr)
            return e
        return None

    def _prefill_off_thread(self, job: Job) -> None:
        """A client that left while its request waited here costs nothing more: its cancels are
        queued already (set with `cancelled`, under the lock) and end it before this joins."""
        gone = all(j.cancelled for j in (job, *job.forks))
        error = None if gone else self._prefill(job)
        with self._wake:
            self._ready.append((job, error))
            self._wake.notify()

    def _join(self, job: Job, error: BaseException | None) -> None:
        """The folded row joins the step, and its forks with it, from its state at the prompt's end."""
        if not job.ended:  # (else cancelled while its prompt folded)
            if error is not None:
                self.engine.fail(job.row, error)
            else:
                self.engine.join(job.row)
        for fork in job.forks:
            self._fork(job, fork, error)
        with self._wake:
            self._unforked -= len(job.forks)
        if not job.ended and job.row.finish_reason:  # an error, or max_tokens 0
            self._emit(job, job.row)

    def _fork(self, job: Job, fork: Job, error: BaseException | None) -> None:
        if fork.ended:
            return
        if error is not None or fork.cancelled:
            return self._end(fork, Finish.ERROR if error is not None else Finish.CANCELLED, error)
        try:
            fork.row = self.engine.fork(job.row, fork.options)
        except Exception as e:  # noqa: BLE001 - this choice alone
            return self._end(fork, Finish.ERROR, e)
        with self._wake:
            self._jobs[fork.row.id] = fork
        if fork.row.finish_reason:  # max_tokens 0
            self._emit(fork, fork.row)

    def _emit(self, job: Job, row: Row) -> None:
        self._post_text(job, row)
        if row.finish_reason:
            self._end(job, row.finish_reason)

    def _post_text(self, job: Job, row: Row) -> None:
        """The row's text and logprob entries not posted yet, if any."""
        text, entries = row.take_text(), row.take_logprobs()
        if text or entries:
            self._post(job, Piece(text, entries))

    def _end(self, job: Job, reason: str, error: BaseException | None = None) -> None:
        if job.ended:
            return
        job.ended = True
        row = job.row
        if row is not None:
            self.engine.cancel(row)  # leaves between steps (a no-op for a finished row)
            with self._wake:
                self._jobs.pop(row.id, None)
            self._post_text(job, row)
        else:
            with self._wake:
                if job in self._waiting:
                    self._waiting.remove(job)
        reason = row.finish_reason if row is not None and row.finish_reason not in (None, Finish.CANCELLED) else reason
        stats = _stats(row)
        self.metrics.finished(reason, stats)
        err = row.error if row is not None else f"{type(error).__name__}: {error}" if error is not None else None
        state = None
        if job.return_state and reason in (Finish.STOP, Finish.LENGTH):
            try:
                state = self.engine.snapshot(row)  # (its last byte folded in: a call of its own)
                self.metrics.states.labels(event="returned").inc()
            except Exception as e:  # noqa: BLE001 - this row's state alone: the answer ends with the error
                reason, err = Finish.ERROR, f"its state could not be written: {type(e).__name__}: {e}"
        self._post(job, End(reason, stats, err, state))


def _stats(row: Row | None) -> GenerationStats:
    return row.stats if row is not None else GenerationStats()
