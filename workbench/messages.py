"""Every message the workbench posts, in one place.

Long engine jobs (training, dashboards, experiments) report through these: the engine's worker thread posts them
to the widget that started the job (Textual's `post_message` is thread safe), and that widget redraws.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class JobMessage(Message):
    """Base of the messages a long job sends: `job_id` says which run, `kind` what it was ("train", "ioi", ...)."""

    def __init__(self, job_id: int, kind: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.kind = kind


class JobStarted(JobMessage):
    """The worker thread picked the job up."""


class JobProgress(JobMessage):
    """A progress report: `info` is the dict the `sae/` function passed to its callback.

    Keys the workbench draws when present: `done`, `total` (any unit), `loss`, `l0`, `explained_variance`,
    `dead_fraction`, `tokens_per_s`, `eta_s`, `note`.
    """

    def __init__(self, job_id: int, kind: str, info: dict[str, Any]) -> None:
        super().__init__(job_id, kind)
        self.info = info


class JobFinished(JobMessage):
    def __init__(self, job_id: int, kind: str, result: Any) -> None:
        super().__init__(job_id, kind)
        self.result = result


class JobFailed(JobMessage):
    """The job raised: `error` is one line meant for the user (shown as a notification)."""

    def __init__(self, job_id: int, kind: str, error: str) -> None:
        super().__init__(job_id, kind)
        self.error = error


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
