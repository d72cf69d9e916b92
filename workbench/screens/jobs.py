"""The base of screens that run one long engine job at a time (experiments, training): a progress bar, a cancel key,
and the job messages (`workbench.messages`) filtered to this screen's own job."""

from __future__ import annotations

from typing import Callable

from textual.widgets import ProgressBar

from workbench.engine import JobHandle
from workbench.messages import JobCancelled, JobFailed, JobMessage, JobProgress, JobStarted
from workbench.screens.base import StatusLine, WorkbenchScreen


class JobScreen(WorkbenchScreen):
    """A screen that runs one long engine job of kind `JOB_KIND` at a time, with a progress bar and a cancel key."""

    JOB_KIND = ""
    AUTO_FOCUS = ""  # nothing: single-letter keys act at once; tab walks into the form, escape leaves it
    job: JobHandle | None = None

    def action_leave_field(self) -> None:
        """Escape: leave the text field; outside one, go back (see `WorkbenchApp.action_back`)."""
        from textual.widgets import Input, Select

        if isinstance(self.focused, (Input, Select)):
            self.set_focus(None)
        else:
            self.wb.action_back()

    def ask_before_replacing(self, what: str, run: Callable[[], None]) -> None:
        """A single letter that would replace the result on screen asks first (y runs, n keeps it)."""
        from workbench.screens.modals import ConfirmScreen

        if getattr(self, "result", None) is None or self.job_running():
            run()
            return
        self.app.push_screen(ConfirmScreen(f"Run {what} again? The result on screen is replaced (p pins it first).",
                                           yes="runs it", no="keeps the result"),
                             lambda yes: run() if yes else None)

    def started(self, handle: JobHandle, running: str) -> None:
        """After starting `handle`: say `running`, or, while it waits behind other jobs, say behind which."""
        self.job = handle
        jobs = self.engine.worker.jobs()
        ids = [h.id for h in jobs]
        ahead = jobs[: ids.index(handle.id)] if handle.id in ids else []
        self.running_text = running
        if ahead and all(h.background for h in ahead):
            self.query_one(StatusLine).say(f"{running} ({ahead[0].label} steps aside and resumes afterwards)")
        elif ahead and handle.state == "queued":
            self.query_one(StatusLine).say(f"waiting behind {ahead[0].label} (ctrl+x cancels that) ...")
        else:
            self.query_one(StatusLine).say(running)

    def on_job_started(self, m: JobStarted) -> None:
        if self.is_mine(m):
            self.query_one(StatusLine).say(getattr(self, "running_text", "") or "running ...")

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
        if self.is_mine(m):
            self.query_one(ProgressBar).update(total=1, progress=0)  # not spinning any more
            self.query_one(StatusLine).say("cancelled")

    def on_job_failed(self, m: JobFailed) -> None:
        if self.is_mine(m):
            self.query_one(ProgressBar).update(total=1, progress=0)  # a failed job's bar stops spinning
            self.query_one(StatusLine).error(m.error)
