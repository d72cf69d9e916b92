"""Stopping a long computation between batches, and reporting how far it got.

`sae/` experiments take `on_progress(done, total)` and `cancel`, either a `threading.Event` (the workbench's
job handle) or any zero-argument callable that returns True once the user asked to stop.
"""

from __future__ import annotations

import threading
from typing import Callable, Union

CancelToken = Union[threading.Event, Callable[[], bool], None]
ProgressFn = Callable[[int, int], None] | None


class Cancelled(Exception):
    """The caller asked to stop; raised between batches, so no partial result is returned."""


def is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def check_cancelled(cancel: CancelToken) -> None:
    """Raise `Cancelled` if `cancel` says stop."""
    if is_cancelled(cancel):
        raise Cancelled("cancelled")


class Steps:
    """Counts finished batches toward a known total, reports each to `on_progress`, and checks `cancel`."""

    def __init__(self, total: int, on_progress: ProgressFn = None, cancel: CancelToken = None) -> None:
        self.total = max(int(total), 0)
        self.done = 0
        self.on_progress = on_progress
        self.cancel = cancel
        check_cancelled(cancel)

    def step(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        check_cancelled(self.cancel)
