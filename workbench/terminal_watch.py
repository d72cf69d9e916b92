"""Ending the workbench when its terminal goes away (a dropped SSH session, a killed tmux window).

Without this the process outlived its terminal: Textual's output thread dies on the first write to the hung-up
terminal, the next writes block the app's event loop for good, and a background job (the first launch's dashboard
build) kept a core busy with nobody to see it. The hang-up signal is not always delivered either (`make run` under
tmux: make is the session's process, not attnscope). So a small thread checks the terminal itself and, once it is
gone or SIGHUP arrived, does what ctrl+q does without the event loop: cancel the jobs and wait for them (a training
run saves its checkpoint, a dashboard build its scan), keep the prompt for the next launch, stop the engine's thread,
and end the process with status 129 (128 + SIGHUP), without trying to restore a terminal that is not there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

HANG_UP_EXIT = 129  # 128 + SIGHUP, as a shell reports a process ended by a hang-up


def terminal_alive() -> bool:
    """Whether the terminal the workbench was started on is still there (a hung-up one fails `isatty`)."""
    try:
        return os.isatty(sys.__stdin__.fileno()) and os.isatty(sys.__stdout__.fileno())
    except (OSError, ValueError, AttributeError):
        return False


class TerminalWatch(threading.Thread):
    """Checks every `interval_s` whether the terminal is alive; on a hang-up ends the app as described above.

    `app` is a `workbench.app.WorkbenchApp`; `end` ends the process (`os._exit` in the launcher, a recorder in
    tests); jobs get `grace_s` to stop after their cancel before the process ends anyway.
    """

    def __init__(self, app: Any, alive: Callable[[], bool] = terminal_alive, interval_s: float = 0.5,
                 grace_s: float = 120.0, end: Callable[[int], None] = os._exit) -> None:
        super().__init__(daemon=True, name="attnscope-terminal-watch")
        self.app = app
        self.alive = alive
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.end = end
        self.hung_up = threading.Event()
        self._finish = threading.Event()

    def install_signal(self) -> None:
        """Treat SIGHUP as a hang-up (main thread only; the handler only sets a flag this thread reads)."""
        signal.signal(signal.SIGHUP, lambda signum, frame: self.hung_up.set())

    def stop(self) -> None:
        self._finish.set()

    def run(self) -> None:
        while not self._finish.wait(self.interval_s):
            if self.hung_up.is_set() or not self.alive():
                self.hung_up.set()
                self.wind_down()
                return

    def wind_down(self) -> None:
        app = self.app
        app.hung_up = True
        worker = app.engine.worker
        handles = worker.cancel_all()
        for h in handles:
            h.done.wait(self.grace_s)
        try:
            app.keep_last_prompt()
        except Exception:  # noqa: BLE001 - the screens may be half torn down; the prompt is a convenience
            pass
        worker.close(timeout=5.0)
        self.end(HANG_UP_EXIT)
