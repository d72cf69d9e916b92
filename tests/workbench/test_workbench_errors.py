"""The error rule in the workbench, through Pilot: a bug in an engine call keeps its traceback (bug log and the
`bug: ... (traceback in <path>)` line), an AttnscopeError is one line inline, a stale request is ignored, and a bug
in a long job is a bug line too."""

from __future__ import annotations

import asyncio
import threading

import pytest

from workbench.engine import Engine, EngineError
from workbench.screens.feature import FeatureScreen
from support import settle

pytestmark = pytest.mark.usefixtures("data_dir")


async def _feature_screen(pilot, app) -> FeatureScreen:
    await settle(pilot, lambda: app.engine.info is not None)
    app.show_feature(1, 3)
    await settle(pilot, lambda: isinstance(app.screen, FeatureScreen) and app.screen.view is not None)
    return app.screen


async def test_a_bug_in_an_engine_call_shows_a_bug_line_and_logs_its_traceback(app, data_dir, monkeypatch):
    def planted(self, layer, feature):  # runs on the worker thread, as the real one does
        return {}["planted bug"]

    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _feature_screen(pilot, app)
        monkeypatch.setattr(Engine, "_dashboard", planted)
        screen.load(1, 4)
        status = screen.query_one("#feature-status")
        await settle(pilot, lambda: status.is_error)
        log = data_dir / "bugs.log"
        assert status.message == f"bug: KeyError: 'planted bug' (traceback in {log})"
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "in planted" in text and "feature screen" in text


async def test_an_attnscope_error_is_one_line_inline_and_no_bug(app, data_dir, monkeypatch):
    def refused(self, layer, feature):
        raise EngineError("feature 4 is outside the layer-1 SAE")

    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _feature_screen(pilot, app)
        monkeypatch.setattr(Engine, "_dashboard", refused)
        screen.load(1, 4)
        status = screen.query_one("#feature-status")
        await settle(pilot, lambda: status.is_error)
        assert status.message == "feature 4 is outside the layer-1 SAE"
        assert not (data_dir / "bugs.log").exists()


async def test_a_stale_request_is_ignored(app, data_dir):
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _feature_screen(pilot, app)
        status = screen.query_one("#feature-status")
        status.say("before")
        release = threading.Event()

        def slow() -> str:
            release.wait(5)
            return "old"

        first = asyncio.ensure_future(screen.ask(app.engine.call(slow, channel="test")))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(screen.ask(app.engine.call(lambda: "new", channel="test")))
        await asyncio.sleep(0.05)
        release.set()
        assert await first is None and await second == "new"
        assert status.message == "before" and not status.is_error
        assert not (data_dir / "bugs.log").exists()


async def test_a_bug_in_a_long_job_is_a_bug_notification_with_its_traceback_logged(app, data_dir):
    from workbench.messages import JobFailed

    seen: list[JobFailed] = []

    def buggy(rep):
        return 1 / 0

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.engine.start_job("demo", buggy, lambda m: (seen.append(m) if isinstance(m, JobFailed) else None,
                                                       app.post_message(m)))
        await settle(pilot, lambda: seen)
        assert seen[0].bug and seen[0].error.startswith("bug: ZeroDivisionError: division by zero (traceback in ")
        assert "in buggy" in (data_dir / "bugs.log").read_text()


async def test_a_bad_corpus_in_a_training_job_is_its_own_one_line_error(tiny_model, saes, tmp_path, data_dir):
    """The engine passes sae/'s CorpusError on as it is (no re-wrap): one line, not a bug."""
    from workbench.messages import JobFailed

    eng = Engine.from_objects(tiny_model, saes, "random")
    seen: list = []
    try:
        eng.train({"layers": [1], "architecture": "topk", "k": 4, "total_tokens": 2000, "batch_size": 64},
                  corpus=str(tmp_path / "no-such-corpus"), out_dir=str(tmp_path / "run"), resume=False,
                  post=seen.append)
        for _ in range(200):
            if any(isinstance(m, JobFailed) for m in seen):
                break
            await asyncio.sleep(0.05)
        failed = next(m for m in seen if isinstance(m, JobFailed))
        assert not failed.bug and failed.error.startswith("corpus ") and "no-such-corpus" in failed.error
        assert not (data_dir / "bugs.log").exists()
    finally:
        eng.close()
