"""Helpers the workbench's pilot tests share: wait for the app, type a prompt. (Their fixtures, `data_dir`, `saes`
and `app`, are in conftest.py.)"""

from __future__ import annotations

import threading
import time

from sae.engine.jobs import Progress

PROMPT = "When Mary and John went to the store, John gave a drink to"


async def settle(pilot, cond, timeout: float = 30.0) -> None:
    """Wait (in app time) until `cond()` holds; fail after `timeout` seconds."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def type_prompt(pilot, app, text: str = PROMPT) -> None:
    """Type `text` into the explore prompt, press enter and wait for the heatmap."""
    app.screen.query_one("#prompt").focus()
    app.screen.query_one("#prompt").value = text
    await pilot.press("enter")
    await settle(pilot, lambda: app.screen.result is not None and app.screen.result.tokens)


def slow_job(started: threading.Event, release: threading.Event, period_s: float = 0.01):
    """A long job that reports progress (so quick requests are served) until `release` is set."""

    def run(rep):
        started.set()
        while not release.is_set():
            time.sleep(period_s)
            rep.progress(Progress("slow", 0, 0, note="working"))
        return "ok"

    return run
