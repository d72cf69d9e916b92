"""The base of screens that run one long engine job at a time (experiments, training): a progress bar, a cancel key,
and the job messages (`workbench.messages`) filtered to this screen's own job."""

from __future__ import annotations

from textual.widgets import ProgressBar

from workbench.engine import JobHandle
from workbench.messages import JobCancelled, JobFailed, JobMessage, JobProgress
from workbench.screens.base import StatusLine, WorkbenchScreen


class JobScreen(WorkbenchScreen):
    """A screen that runs one long engine job of kind `JOB_KIND` at a time, with a progress bar and a cancel key."""

    JOB_KIND = ""
    AUTO_FOCUS = ""  # nothing: single-letter keys act at once; tab walks into the form, escape leaves it
    job: JobHandle | None = None

    def action_leave_field(self) -> None:
        self.set_focus(None)

    def job_running(self) -> bool:
        return self.job is not None and self.job.running

    def is_mine(self, m: JobMessage) -> bool:
        """The message is about this screen's current job."""
        return m.kind == self.JOB_KIND and self.job is not None and m.job_id == self.job.id

    def action_cancel(self) -> None:
        if self.job_running():
            self.job.cancel()
            self.query_one(StatusLine).say("stopping after the current batch ...")
        else:
            self.query_one(StatusLine).say("nothing is running")

    def on_job_progress(self, m: JobProgress) -> None:
        if not self.is_mine(m):
            return
        p = m.progress
        if p.total > 0:
            self.query_one(ProgressBar).update(total=p.total, progress=p.done)

    def on_job_cancelled(self, m: JobCancelled) -> None:
        if m.kind == self.JOB_KIND:
            self.query_one(StatusLine).say("cancelled")

    def on_job_failed(self, m: JobFailed) -> None:
        if m.kind == self.JOB_KIND:
            self.query_one(StatusLine).error(m.error)
