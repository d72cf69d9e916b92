"""The worker thread: one thread owns all torch work, serving quick requests and running long jobs.

All torch work runs on a single thread, so hooks registered by one analysis never fire in another's forward
pass. The UI talks to it through an asyncio API:

- `await worker.call(fn, ..., channel="features")`: a quick request. A newer request on the same channel makes
  older ones stale: they are dropped before they start, or their result is discarded, and the awaiter gets
  `StaleRequest` (the UI ignores it). This is what keeps typing in the prompt box cheap.
- `worker.start_job(kind, fn, post=...)`: a long job (training, dashboards, experiments). It reports through
  typed messages (`workbench.messages`) and can be cancelled. While a long job runs, each of its progress reports
  also serves the quick requests waiting in line, so the explore screen keeps answering during a training run.

How a failure ends (the error rule, ARCHITECTURE.md "Errors"): `Cancelled` is a cancellation (`JobCancelled`); an
`AttnscopeError` is meant for the user and becomes a one-line `JobFailed` (or, for a quick request, goes back to
the awaiting screen, which shows it inline); anything else is a bug: its traceback is written to the bug log
(`bug_log_path`, in the data dir) and Textual's log, and the user sees `bug: <one line> (traceback in <path>)`.
A failure never stops the worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from sae.engine.errors import AttnscopeError, bug_log_path, one_line  # noqa: F401 - re-exported by workbench.engine
from sae.engine.errors import record_bug as log_bug
from sae.engine.jobs import CancelToken, Cancelled, Progress
from workbench.messages import JobCancelled, JobFailed, JobFinished, JobProgress, JobStarted

T = TypeVar("T")
Post = Callable[[Any], None]


class StaleRequest(Exception):
    """A newer request on the same channel replaced this one; its result would be out of date."""


class EngineError(AttnscopeError):
    """A request failed for a reason the user can act on (no SAE for that layer, run a prompt first, ...)."""


_log = logging.getLogger("attnscope.workbench")


def record_bug(exc: BaseException, where: str = "") -> str:
    """Log a bug (an exception that is not an `AttnscopeError`) with its traceback to the `attnscope.workbench`
    logger and to the bug log (`sae.engine.errors.record_bug`); returns the line the user sees:
    `bug: <one line> (traceback in <path>)`."""
    _log.error("bug%s: %s", f" in {where}" if where else "",
               "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return log_bug(exc, where)


def as_progress(kind: str, info: Progress | None) -> Progress:
    """A job's report as a `Progress` (the one job protocol); None becomes an empty report of `kind`."""
    return info if info is not None else Progress(job=kind, done=0, total=0)


@dataclass
class Reporter:
    """Handed to a long job: `progress(p)` posts a `JobProgress` (at most every `min_interval_s`, and always the
    last one), serves waiting quick requests and raises `Cancelled` once the user stopped the job. `cancel` is the
    job's `CancelToken`, handed to `sae/` functions with `on_progress=reporter.progress`."""

    job_id: int
    kind: str
    cancel: CancelToken
    _post: Post
    _serve: Callable[[], None]
    min_interval_s: float = 0.05
    _last: float = 0.0
    handle: "JobHandle | None" = None

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled

    def progress(self, report: Progress | None = None) -> None:
        now = time.monotonic()
        p = as_progress(self.kind, report)
        if self.handle is not None:
            self.handle.last = p  # what the global job indicator shows
        final = p.total > 0 and p.done >= p.total
        if final or now - self._last >= self.min_interval_s:  # a training loop may report thousands of times
            self._last = now
            self._post(JobProgress(self.job_id, self.kind, p))
        self._serve()
        self.cancel.check()


@dataclass
class JobHandle:
    """A long job as the UI holds it."""

    id: int
    kind: str
    label: str = ""  # what the job indicator calls it ("dashboards of layer 1", "training")
    key: str = ""  # comma-separated work items; a job sharing one with a live job is refused (the same work)
    background: bool = False  # started by the app itself; user jobs go ahead of it in the queue
    token: CancelToken = field(default_factory=CancelToken)
    done: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, finished, failed, cancelled
    last: Progress | None = None  # the latest progress report

    stopped_by_user: bool = False
    paused: bool = False  # a background job asked to step aside for a user's job; it is queued again after

    def cancel(self) -> None:
        self.stopped_by_user = True
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.stopped_by_user or (self.token.cancelled and not self.paused)

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")


@dataclass
class _Quick:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    channel: str | None
    generation: int


@dataclass
class _Long:
    handle: JobHandle
    fn: Callable[[Reporter], Any]
    post: Post


_STOP = object()


class Worker:
    """One thread, two lines: quick requests are served before long jobs, and during them."""

    def __init__(self, name: str = "attnscope-engine") -> None:
        self._quick: queue.SimpleQueue[_Quick] = queue.SimpleQueue()
        self._wake: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._long: list[_Long] = []
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._current: _Long | None = None
        self._thread.start()

    # ---- called from the event loop ---------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, channel: str | None = None, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the worker thread and await its result (or its exception)."""
        if self._closed:
            raise EngineError("the engine is shut down")
        loop = asyncio.get_running_loop()
        gen = 0
        if channel is not None:
            with self._lock:
                gen = self._generation.get(channel, 0) + 1
                self._generation[channel] = gen
        fut: asyncio.Future = loop.create_future()
        self._quick.put(_Quick(fn, args, kwargs, loop, fut, channel, gen))
        self._wake.put(None)
        return await fut

    def start_job(self, kind: str, fn: Callable[[Reporter], Any], post: Post, label: str = "", key: str = "",
                  background: bool = False) -> JobHandle:
        """Queue a long job; `fn(reporter)` runs on the worker thread and its result is posted as `JobFinished`.

        A job whose `key` shares an item with a queued or running job's is refused (`EngineError`), so pressing a key twice
        never queues the same work twice. A `background` job (one the app starts by itself) waits behind the
        user's jobs."""
        if self._closed:
            raise EngineError("the engine is shut down")
        handle = JobHandle(id=next(self._ids), kind=kind, label=label or kind, key=key, background=background)
        with self._lock:
            if key:
                mine = set(key.split(","))
                for other in self.jobs_locked():
                    if mine & set(other.key.split(",")):
                        where = "running" if other.state == "running" else "waiting"
                        raise EngineError(f"{other.label} is already {where}")
            item = _Long(handle, fn, post)
            if background:
                self._long.append(item)
            else:  # ahead of queued background jobs, and a running background job steps aside (it resumes after)
                i = next((i for i, j in enumerate(self._long) if j.handle.background), len(self._long))
                self._long.insert(i, item)
                cur = self._current.handle if self._current is not None else None
                if cur is not None and cur.background and not cur.stopped_by_user:
                    cur.paused = True
                    cur.token.cancel()
        self._wake.put(None)
        return handle

    def jobs_locked(self) -> list[JobHandle]:
        out = [self._current.handle] if self._current is not None else []
        return out + [j.handle for j in self._long if not j.handle.cancelled]

    def jobs(self) -> list[JobHandle]:
        """The running job (first) and the jobs waiting behind it, in order."""
        with self._lock:
            return self.jobs_locked()

    def cancel_all(self) -> list[JobHandle]:
        """Ask every running or waiting job to stop; returns them (wait on `handle.done`)."""
        with self._lock:
            handles = self.jobs_locked()
        for h in handles:
            h.cancel()
        self._wake.put(None)  # queued ones are dropped (with JobCancelled) when the thread looks again
        return handles

    def idle(self) -> bool:
        with self._lock:
            return self._current is None and not self._long

    def is_current(self, channel: str, generation: int) -> bool:
        with self._lock:
            return self._generation.get(channel, 0) == generation

    def close(self, timeout: float | None = 2.0) -> bool:
        """Stop the thread after the work in hand; running long jobs are asked to cancel. True when the thread
        ended within `timeout` (None waits for it)."""
        self._closed = True
        self.cancel_all()
        self._wake.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the worker thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            token = self._wake.get()
            self.serve_quick()
            with self._lock:
                job = self._long.pop(0) if self._long else None
                self._current = job
            if job is not None:
                try:
                    self._run_long(job)
                finally:
                    with self._lock:
                        self._current = None
                self._wake.put(None)  # look again: more jobs may be waiting
            if token is _STOP:
                self.serve_quick()
                return

    def serve_quick(self) -> None:
        """Run every quick request waiting now (also called from inside long jobs' progress reports)."""
        while True:
            try:
                req = self._quick.get_nowait()
            except queue.Empty:
                return
            self._run_quick(req)

    def _run_quick(self, req: _Quick) -> None:
        if req.future.cancelled():
            return
        if req.channel is not None and not self.is_current(req.channel, req.generation):
            _settle(req, exc=StaleRequest(req.channel))
            return
        try:
            result = req.fn(*req.args, **req.kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure, with its traceback, goes back to the awaiter
            _settle(req, exc=exc)
            return
        if req.channel is not None and not self.is_current(req.channel, req.generation):
            _settle(req, exc=StaleRequest(req.channel))
        else:
            _settle(req, result=result)

    def _run_long(self, job: _Long) -> None:
        h = job.handle
        if h.cancelled:
            h.state = "cancelled"
            job.post(JobCancelled(h.id, h.kind))
            h.done.set()
            return
        h.state = "running"
        job.post(JobStarted(h.id, h.kind))
        reporter = Reporter(h.id, h.kind, h.token, job.post, self.serve_quick, handle=h)
        try:
            result = job.fn(reporter)
        except BaseException as exc:  # noqa: BLE001 - the thread outlives any job; each failure is sorted below
            if h.paused and not h.stopped_by_user and not self._closed:
                self._requeue(job)  # stepped aside for a user's job: it saved its state and resumes later
                return
            if isinstance(exc, Cancelled) or (h.cancelled and isinstance(exc, AttnscopeError)):
                h.state = "cancelled"
                job.post(JobCancelled(h.id, h.kind))
            elif isinstance(exc, AttnscopeError):
                h.state = "failed"
                job.post(JobFailed(h.id, h.kind, one_line(exc)))
            else:  # a bug: it keeps its traceback
                h.state = "failed"
                line = record_bug(exc, f"job {h.label}")
                job.post(JobFailed(h.id, h.kind, line, bug=True,
                                   traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
        else:
            if h.cancelled:  # the sae/ function noticed the token and returned what it had
                h.state = "cancelled"
                job.post(JobCancelled(h.id, h.kind, result))
            else:
                h.state = "finished"
                job.post(JobFinished(h.id, h.kind, result))
        finally:
            if h.state != "queued":
                h.done.set()

    def _requeue(self, job: _Long) -> None:
        h = job.handle
        h.paused, h.token, h.state, h.last = False, CancelToken(), "queued", None
        with self._lock:
            self._long.append(job)


def _settle(req: _Quick, result: Any = None, exc: BaseException | None = None) -> None:
    def apply() -> None:
        if req.future.done():
            return
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(result)

    try:
        req.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass
