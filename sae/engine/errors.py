"""The one base of every error meant for the user.

`str(exc)` of an `AttnscopeError` is one line that says what is wrong and, where it helps, what to do. The CLI
catches the base once (exit 2, `attnscope: error: ...`) and so does the workbench engine (an inline message); any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class AttnscopeError(Exception):
    """A problem the user can fix (bad input, a missing or corrupt file); the message is one line."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


class TrainingError(AttnscopeError, ValueError):
    """Training could not start or had to stop (`sae.engine.training`); the message is one line meant for the user."""


class TrainingDiverged(TrainingError):
    """The loss became NaN/inf. The last good checkpoint (if any) is kept untouched."""
