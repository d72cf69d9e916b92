"""The global job indicator: one line above the footer on every screen, saying what runs, what waits, and how to
cancel it. It reads the engine worker's job list (`Worker.jobs()`) a few times a second, so it needs no messages."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from workbench.engine import JobHandle


def short_count(x: float) -> str:
    """12 -> '12', 34_200 -> '34k', 1_250_000 -> '1.2M' (the indicator has little room)."""
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def job_line(h: JobHandle) -> str:
    """'dashboards of layer 1: scanning 34k/60k tokens · 57%' for a running job, its label for a waiting one."""
    p = h.last
    if h.state != "running":
        return h.label
    if p is None:
        return f"{h.label}: starting"
    text = p.stage or h.label
    if h.kind == "dashboards":
        text = f"dashboards of {text}" if text.startswith("layer") else f"{h.label}: {text}"
    if p.total > 0:
        text += f"{progress_counts(p)} · {p.fraction:.0%}"
    return text


def progress_counts(p: Any) -> str:
    """' 34k/60k tokens' for a job's progress report (`sae.engine.jobs.Progress`) with a known total, else '': the one
    way the job line and the screens' status lines write counts."""
    return f" {short_count(p.done)}/{short_count(p.total)} {p.unit}" if p.total > 0 else ""


CANCEL_HINT = "  ctrl+x cancels"


def jobs_text(jobs: list[JobHandle], width: int | None = None) -> Text:
    """The indicator's line for the worker's jobs (running one first, then those waiting); within `width` columns
    the jobs' text is shortened (ellipsis), never the cancel key."""
    if not jobs:
        return Text("")
    first, rest = jobs[0], jobs[1:]
    text = Text()
    if first.state == "running":
        text.append("▶ ", style="bold green")
        text.append(job_line(first))
        if first.cancelled:
            text.append(" · stopping", style="yellow")
    else:
        rest = jobs
    if rest:
        text.append(" · " if len(text) else "", style="dim")
        text.append(f"waiting: {', '.join(h.label for h in rest)}", style="yellow")
    if width is not None and text.cell_len > width - len(CANCEL_HINT):
        text.truncate(max(1, width - len(CANCEL_HINT)), overflow="ellipsis")
    text.append(CANCEL_HINT, style="dim")
    return text


class JobBar(Static):
    """Hidden while nothing runs."""

    DEFAULT_CSS = "JobBar { height: 1; padding: 0 1; background: $boost; } JobBar.idle { display: none; }"

    def __init__(self) -> None:
        super().__init__("", id="job-bar", classes="idle")
        self._last: tuple = ()

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(0.25, self.poll)

    def poll(self) -> None:
        engine = getattr(self.app, "engine", None)
        jobs = engine.worker.jobs() if engine is not None else []
        p = jobs[0].last if jobs else None
        width = self.content_size.width or None
        key = tuple((h.id, h.state, h.cancelled) for h in jobs) + ((p.done, p.stage) if p else ()) + (width,)
        if key == self._last:
            return
        self._last = key
        self.set_class(not jobs, "idle")
        self.update(jobs_text(jobs, width))
