"""The one job protocol: how long computations report progress and how they are stopped.

Every long computation in `sae/` (training, dashboard builds, experiments, evaluation) takes
`on_progress: ProgressFn` and `cancel: CancelToken | None`. It calls `on_progress(Progress(...))` between batches
and `cancel.check()` (or `Steps.step`) at the same points; a cancelled job raises `Cancelled`, the one type every
caller catches. The workbench turns `Progress` into one Textual message whose newer copies replace older queued
ones; the CLI draws it as a rich progress bar.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping


class Cancelled(Exception):
    """The caller asked to stop; raised between batches, so no half-made result is returned. Not an
    `AttnscopeError`: nothing went wrong, so no error is shown; the caller that cancelled expects it."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Progress:
    """How far one job got.

    `done` and `total` count `unit`s ("tokens", "prompts", "steps", "rows"); `stage` names the part being done
    ("layer 1", "clean run"); `rate` is units per second of *this* process (not counting work restored from a
    checkpoint); `metrics` carries job-specific figures (loss, L0, explained variance) for live plots.
    """

    job: str
    done: float
    total: float
    unit: str = "steps"
    stage: str = ""
    rate: float | None = None
    eta_s: float | None = None
    note: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(max(self.done / self.total, 0.0), 1.0)


ProgressFn = Callable[[Progress], None]


class CancelToken:
    """A thread-safe stop flag handed from the caller (CLI signal handler, workbench job) into the computation."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` once `cancel()` was called."""
        if self._event.is_set():
            raise Cancelled()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel; True when cancelled."""
        return self._event.wait(timeout)


def check_cancelled(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.check()


class Steps:
    """Counts finished batches toward a known total, reports each as `Progress`, and checks `cancel`."""

    def __init__(
        self,
        job: str,
        total: int,
        on_progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        unit: str = "steps",
        stage: str = "",
    ) -> None:
        self.job, self.unit, self.stage = job, unit, stage
        self.total = max(int(total), 0)
        self.done = 0
        self.on_progress = on_progress
        self.cancel = cancel
        check_cancelled(cancel)

    def step(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.on_progress is not None:
            self.on_progress(Progress(self.job, self.done, self.total, unit=self.unit, stage=self.stage))
        check_cancelled(self.cancel)
