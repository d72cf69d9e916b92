"""The one base of every error meant for the user.

`str(exc)` of an `AttnscopeError` is one line that says what is wrong and, where it helps, what to do. The CLI
catches the base once (exit 2, `attnscope: error: ...`) and so does the workbench engine (an inline message); any
other exception is a bug and keeps its traceback: `record_bug` appends it to `bugs.log` in the data dir and gives
the one line the user sees, `bug: <type>: <first line> (traceback in <path>)` (the CLI's entry point, a training
data thread and the workbench's worker alike).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path


class AttnscopeError(Exception):
    """A problem the user can fix (bad input, a missing or corrupt file); the message is one line."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


class TrainingError(AttnscopeError, ValueError):
    """Training could not start or had to stop (`sae.engine.training`); the message is one line meant for the user."""


class TrainingDiverged(TrainingError):
    """The loss became NaN/inf. The last good checkpoint (if any) is kept untouched."""


# ---- bugs: exceptions that are not AttnscopeErrors ------------------------------------------------------------

BUG_LOG = "bugs.log"
_bug_lock = threading.Lock()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def bug_log_path() -> Path:
    """Where bugs' tracebacks go: `bugs.log` in the data dir (`$ATTNSCOPE_DATA_DIR` or the platform's)."""
    data = os.environ.get("ATTNSCOPE_DATA_DIR")
    if data:
        return Path(data).expanduser() / BUG_LOG
    import platformdirs

    return Path(platformdirs.user_data_dir("attnscope")) / BUG_LOG


def record_bug(exc: BaseException, where: str = "") -> str:
    """Append a bug's traceback (an exception that is not an `AttnscopeError`; a thread's frames included when it
    was handed over and raised again) to the bug log, never through a symlink; the line the user sees:
    `bug: <type>: <one line> (traceback in <path>)`, or `(traceback not saved: <why>)` when the log cannot be
    written."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = bug_log_path()
    head = f"bug: {type(exc).__name__}: {one_line(exc)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _bug_lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(f"--- {stamp}{' ' + where if where else ''}\n{tb}\n")
    except OSError as err:  # the log itself cannot be written: say so in the line instead of the path
        return f"{head} (traceback not saved: {one_line(err)})"
    return f"{head} (traceback in {path})"
