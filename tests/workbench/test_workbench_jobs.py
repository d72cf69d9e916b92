"""The study sample and the trace as workbench jobs: each shows on the job line, ctrl+x cancels it, the explore
heatmap answers while it runs, and a second request with the same inputs is answered without computing again
(the study from the analysis cache, the trace from the engine's memory)."""

from __future__ import annotations

import threading

import pytest
from support import (PROMPT, build_small_dashboards, private_dirs, settle, small_dashboard_spec, small_docs, two_random_saes,
                     type_prompt)

from sae.analysis import study as study_mod
from sae.analysis import trace as trace_mod
from sae.engine.jobs import Progress
from workbench.app import WorkbenchApp
from workbench.engine import Engine
from workbench.findings import FindingsStore
from workbench.screens.explore import ExploreScreen
from workbench.screens.feature import FeatureScreen
from workbench.screens.study import StudyScreen


class Gate:
    """Makes a wrapped computation work slowly (reporting progress, so quick requests are served and a cancel is
    seen) until released, and counts the real computations."""

    def __init__(self) -> None:
        self.slow = True
        self.started, self.release = threading.Event(), threading.Event()
        self.calls = 0

    def wrap(self, real):
        def run(*a, on_progress=None, cancel=None, **k):
            if self.slow:
                self.started.set()
                i = 0
                while not self.release.wait(0.01):
                    i += 1
                    on_progress(Progress("slow", i % 10, 10, unit="steps", stage="working"))
                raise AssertionError("the job should have been cancelled")
            self.calls += 1
            return real(*a, on_progress=on_progress, cancel=cancel, **k)

        return run


def job_line(screen) -> str:
    return str(screen.query_one("#job-bar").render())


async def heatmap_answers_during_the_job(pilot, app, label: str) -> None:
    """Switch to explore, run a new prompt and see the heatmap while the job `label` still runs."""
    await pilot.press("1")
    await settle(pilot, lambda: isinstance(app.screen, ExploreScreen))
    explore = app.screen
    old = explore.result
    status = explore.query_one("#explore-status")
    said: list[str] = []
    orig_say = status.say
    status.say = lambda m: (said.append(m), orig_say(m))  # type: ignore[method-assign]
    explore.query_one("#prompt").value = PROMPT + " again"
    explore.query_one("#prompt").focus()
    await pilot.press("enter")
    await settle(pilot, lambda: explore.result is not None and explore.result is not old and explore.result.tokens)
    assert [h.label for h in app.engine.worker.jobs()] == [label]
    assert any("pending" in m and label in m for m in said)  # it said what it waited for
    status.say = orig_say  # type: ignore[method-assign]
    explore.query_one("#heatmap").focus()


@pytest.fixture
def built(tiny_model, tmp_path, monkeypatch):
    """Random SAEs for layers 0 and 1 with their dashboards built into a private cache; a private data dir."""
    private_dirs(monkeypatch, tmp_path)
    saes = two_random_saes(tiny_model)
    build_small_dashboards(tiny_model, saes)
    return saes, tmp_path


async def test_study_sample_is_a_job_ctrl_x_cancels_and_a_second_visit_reads_the_cache(tiny_model, built, monkeypatch):
    saes, tmp_path = built
    gate = Gate()
    monkeypatch.setattr(study_mod, "study_layer", gate.wrap(study_mod.study_layer))
    app = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), findings=FindingsStore(tmp_path / "findings"))
    try:
        async with app.run_test(size=(110, 32)) as pilot:
            await settle(pilot, lambda: app.engine.info is not None)
            app.screen.query_one("#heatmap").focus()
            await pilot.press("8")
            await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
            study = app.screen
            await settle(pilot, lambda: gate.started.is_set())
            await settle(pilot, lambda: "study sample" in job_line(study))
            await settle(pilot, lambda: "ctrl+x" in study.query_one("#study-status").message)

            await heatmap_answers_during_the_job(pilot, app, "study sample")

            await pilot.press("8")
            await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
            await pilot.press("ctrl+x")
            await settle(pilot, lambda: "cancelled" in study.query_one("#study-status").message)
            assert not app.engine.worker.jobs() and not study.items
            assert await app.engine.study_cached(study.n, study.seed) is None  # a cancelled sample is not kept

            gate.slow = False
            study.reload()
            await settle(pilot, lambda: study.items and study.view is not None)
            assert gate.calls == 2  # layers 0 and 1
            first = list(study.items)

            study.items = []
            study.reload()  # a second visit: from the cache, no job, no computation
            await settle(pilot, lambda: study.items)
            assert study.items == first and gate.calls == 2 and study.job is None
    finally:
        gate.release.set()


async def test_trace_is_a_job_ctrl_x_cancels_and_a_revisited_position_comes_from_memory(app, data_dir, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(trace_mod, "trace_feature", gate.wrap(trace_mod.trace_feature))
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot, lambda: app.engine.info is not None)
            await type_prompt(pilot, app)
            explore = app.screen
            await pilot.press("down", "down", "down", "down", "right")
            await settle(pilot, lambda: explore.detail is not None and explore.detail.pos == 4)
            await pilot.press("t")
            await settle(pilot, lambda: isinstance(app.screen, FeatureScreen))
            feat = app.screen
            await settle(pilot, lambda: gate.started.is_set())
            label = app.engine.worker.jobs()[0].label
            assert label.startswith("trace of L1 F") and label.endswith("at 4")
            await settle(pilot, lambda: "trace of" in job_line(feat))
            await settle(pilot, lambda: "ctrl+x" in feat.query_one("#feature-status").message)

            await heatmap_answers_during_the_job(pilot, app, label)

            await pilot.press("2")
            await settle(pilot, lambda: isinstance(app.screen, FeatureScreen))
            await pilot.press("ctrl+x")
            await settle(pilot, lambda: "trace cancelled" in feat.query_one("#feature-status").message)
            assert not app.engine.worker.jobs() and feat.trace is None

            gate.slow = False
            await pilot.press("t")
            await settle(pilot, lambda: feat.trace is not None)
            assert feat.trace.pos == 4 and gate.calls == 1
            await pilot.press("full_stop")
            await settle(pilot, lambda: feat.trace is not None and feat.trace.pos == 5)
            assert gate.calls == 2
            await pilot.press("comma")  # back to 4: drawn from memory, nothing recomputed, no job
            await settle(pilot, lambda: feat.trace is not None and feat.trace.pos == 4)
            await pilot.press("t")
            await pilot.pause(0.2)
            assert feat.trace.pos == 4 and gate.calls == 2 and feat.trace_job is None
    finally:
        gate.release.set()



async def test_study_opened_while_the_dashboards_are_built_waits_and_draws_itself_when_they_are_done(
        tiny_model, tmp_path, monkeypatch):
    """First launch: the study screen opened during the background dashboard build says it waits for them (not
    'not built yet; run attnscope dashboards build'), and draws its sample by itself when the build finishes."""
    from sae.analysis import dashboards as dash

    private_dirs(monkeypatch, tmp_path)
    small = small_dashboard_spec()
    monkeypatch.setattr(dash, "DashboardSpec", lambda: small)
    monkeypatch.setattr("sae.zoo.corpus_texts", lambda *a, **k: small_docs())
    started, release = threading.Event(), threading.Event()
    real_build = dash.build_layers

    def slow_build(*a, on_progress=None, cancel=None, **k):
        started.set()
        while not release.wait(0.01):  # progress reports serve the screens' quick requests meanwhile
            on_progress(Progress("dashboards", 0, 0, unit="tokens", stage="waiting"))
        return real_build(*a, on_progress=on_progress, cancel=cancel, **k)

    monkeypatch.setattr(dash, "build_layers", slow_build)
    saes = two_random_saes(tiny_model)
    app = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), auto_build=True,
                       findings=FindingsStore(tmp_path / "findings"))
    try:
        async with app.run_test(size=(110, 32)) as pilot:
            await settle(pilot, lambda: app.engine.info is not None)
            await settle(pilot, lambda: started.is_set(), timeout=30)
            app.screen.query_one("#heatmap").focus()
            await pilot.press("8")
            await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
            study = app.screen
            status = study.query_one("#study-status")
            await settle(pilot, lambda: "being built" in status.message)
            assert not status.is_error and not study.items and "not built" not in status.message
            release.set()
            await settle(pilot, lambda: study.items, timeout=60)  # drawn by itself once the build finished
    finally:
        release.set()
