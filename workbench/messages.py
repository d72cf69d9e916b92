"""Every message the workbench posts, in one place.

Long engine jobs (training, dashboards, experiments) report through these: the engine's worker thread posts them
to the widget that started the job (Textual's `post_message` is thread safe), and that widget redraws.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from sae.engine.jobs import Progress


class JobMessage(Message):
    """Base of the messages a long job sends: `job_id` says which run, `kind` what it was ("train", "ioi", ...)."""

    def __init__(self, job_id: int, kind: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.kind = kind


class JobStarted(JobMessage):
    """The worker thread picked the job up."""


class JobProgress(JobMessage):
    """A progress report (`sae.engine.jobs.Progress`: done/total in a unit, stage, rate, ETA, metrics).

    Reports come often; a newer report of the same job replaces an older one still waiting in the queue, so a busy
    screen draws only the latest."""

    def __init__(self, job_id: int, kind: str, progress: Progress) -> None:
        super().__init__(job_id, kind)
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job_id == self.job_id


class JobFinished(JobMessage):
    def __init__(self, job_id: int, kind: str, result: Any) -> None:
        super().__init__(job_id, kind)
        self.result = result


class JobFailed(JobMessage):
    """The job raised: `error` is one line meant for the user (shown as a notification). `bug` is True when it was
    not an `AttnscopeError`: then `error` reads `bug: ... (traceback in <path>)` and `traceback` holds it."""

    def __init__(self, job_id: int, kind: str, error: str, bug: bool = False, traceback: str = "") -> None:
        super().__init__(job_id, kind)
        self.error = error
        self.bug = bug
        self.traceback = traceback


class JobCancelled(JobMessage):
    """The user stopped the job; `partial` is whatever the job returned or checkpointed before stopping."""

    def __init__(self, job_id: int, kind: str, partial: Any = None) -> None:
        super().__init__(job_id, kind)
        self.partial = partial


class CellSelected(Message):
    """The heatmap cursor moved to (token position, feature column)."""

    def __init__(self, pos: int, column: int) -> None:
        super().__init__()
        self.pos = pos
        self.column = column


class FindingPinned(Message):
    """A finding was added to the store (the findings screen refreshes)."""

    def __init__(self, finding_id: str) -> None:
        super().__init__()
        self.finding_id = finding_id
