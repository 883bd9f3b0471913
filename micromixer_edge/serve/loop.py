"""One thread owns the model and its engine: requests join between steps, every step is one call
for all live rows, and each row's pieces go back to its request's asyncio queue."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time

from ..runtime.engine import Engine, GenerateOptions, Row
from ..runtime.model import MixerModel
from .metrics import Metrics


class QueueFull(Exception):
    """More requests wait than --max-queue allows."""


class ShuttingDown(Exception):
    """The server stopped accepting requests."""


@dataclasses.dataclass(eq=False)
class Job:
    prompt: str
    options: GenerateOptions
    out: asyncio.Queue          # ("piece", text) ... then ("done", finish_reason, usage dict)
    aio: asyncio.AbstractEventLoop
    row: Row | None = None
    cancelled: bool = False
    ended: bool = False
    answered: bool = False      # something was posted: the first text goes out without waiting



FLUSH_SECONDS = 0.02  # text reaches the event loop at most 50 times a second: one wake-up for all rows


def _deliver(items) -> None:
    for job, item in items:
        job.out.put_nowait(item)


class DecodeLoop:
    def __init__(self, model: MixerModel, max_batch: int, max_queue: int, metrics: Metrics):
        self.engine, self.max_batch, self.max_queue, self.metrics = Engine(model), max_batch, max_queue, metrics
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}   # row id -> job, for live rows
        self._cancel: list[Job] = []
        self._wake = threading.Condition()
        self._running, self.accepting = True, True
        self._outbox: list = []   # (job, item) waiting for the next flush
        self._flushed, self._urgent = 0.0, False
        self._thread = threading.Thread(target=self._run, name="mixer-decode", daemon=True)

    # --- called from the event loop ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: str, options: GenerateOptions) -> Job:
        job = Job(prompt, options, asyncio.Queue(), asyncio.get_running_loop())
        with self._wake:
            if not self.accepting:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: its row leaves before the next step."""
        with self._wake:
            job.cancelled = True
            self._cancel.append(job)
            self._wake.notify()

    def counts(self) -> tuple[int, int]:
        with self._wake:
            return len(self._jobs), len(self._waiting)

    def end_all(self) -> None:
        """Shutdown: stop accepting, and end every live or waiting row after this step."""
        with self._wake:
            self.accepting = False
            self._cancel.extend(self._waiting)
            self._cancel.extend(self._jobs.values())
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout=5)

    # --- the decode thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self.engine.rows:
                self._flush(force=True)
            with self._wake:
                while self._running and not (self._waiting or self._cancel or self._jobs):
                    self._wake.wait()
                if not self._running:
                    return
                cancel, self._cancel = self._cancel, []
                admit = []
                while self._waiting and len(self._jobs) + len(admit) < self.max_batch:
                    admit.append(self._waiting.popleft())
            for job in cancel:
                self._end(job, "cancelled")
            for job in admit:
                self._admit(job)
            self.metrics.rows(len(self._jobs), len(self._waiting))
            if self.engine.rows:
                t0 = time.perf_counter()
                touched = self.engine.step()
                self.metrics.step_seconds.observe(time.perf_counter() - t0)
                for row in touched:
                    self._emit(self._jobs[row.id], row)
                self._flush()

    def _post(self, job: Job, *item) -> None:
        self._outbox.append((job, item))
        if not job.answered or item[0] == "done":  # first byte and last: flushed after this step
            job.answered, self._urgent = True, True

    def _flush(self, force: bool = False) -> None:
        """Hand the pending text to the event loop: one call_soon_threadsafe for every row, at
        most every FLUSH_SECONDS (a wake-up per row and byte would cost more than the step), and
        at once when a request gets its first text or its end."""
        now = time.perf_counter()
        if self._outbox and (force or self._urgent or now - self._flushed >= FLUSH_SECONDS):
            items, self._outbox, self._flushed, self._urgent = self._outbox, [], now, False
            items[0][0].aio.call_soon_threadsafe(_deliver, items)

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            return self._end(job, "cancelled")
        job.row = self.engine.add(job.prompt, job.options)
        self._jobs[job.row.id] = job
        if job.row.finish_reason:  # max_tokens 0
            self._emit(job, job.row)

    def _emit(self, job: Job, row: Row) -> None:
        if row.pieces:
            self._post(job, "piece", "".join(row.pieces))
            row.pieces.clear()
        if row.finish_reason:
            self._end(job, row.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        if job.ended:
            return
        job.ended = True
        row = job.row
        if row is not None:
            self.engine.cancel(row)  # leaves between steps (a no-op for a finished row)
            self._jobs.pop(row.id, None)
            if row.pieces:
                self._post(job, "piece", "".join(row.pieces))
                row.pieces.clear()
        elif job in self._waiting:
            self._waiting.remove(job)
        reason = row.finish_reason if row is not None and row.finish_reason not in (None, "cancelled") else reason
        tokens = row.stats.new_tokens if row is not None else 0
        prompt = row.stats.prompt_tokens if row is not None else 0
        self.metrics.finished(reason, tokens)
        self._post(job, "done", reason, {"prompt_tokens": prompt, "completion_tokens": tokens,
                                         "total_tokens": prompt + tokens})
