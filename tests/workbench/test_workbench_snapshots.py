"""SVG snapshots of every workbench screen at 80x24 (the smallest size we support), on a tiny model with random SAEs.

Regenerate after an intended change with `pytest tests/workbench/test_workbench_snapshots.py --snapshot-update` and review
the SVG diffs. Determinism: fixed terminal size, no cursor blink, seeded model and SAEs, findings in a tmp dir.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from support import random_sae
from textual.widgets import Input

from workbench.app import WorkbenchApp
from workbench.engine import Engine
from workbench.findings import FindingsStore

SIZE = (80, 24)
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture
def app(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))  # no dashboards built: same screen everywhere
    saes = {0: random_sae(tiny_model, 0, d_sae=48, seed=1), 1: random_sae(tiny_model, 1, d_sae=48, seed=2)}
    engine = Engine.from_objects(tiny_model, saes, "random-saes")
    engine.model_spec = "tiny"  # what the status line prints, independent of the tmp path
    engine.info = dataclasses.replace(engine.info, model="tiny")
    return WorkbenchApp(engine, findings=FindingsStore(tmp_path))


async def wait_for(pilot, cond, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        await pilot.pause(0.02)


def no_blink(app) -> None:
    for inp in app.screen.query(Input):
        inp.cursor_blink = False


async def explored(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.engine.info is not None)
    screen = app.screen
    no_blink(app)
    screen.query_one("#prompt").value = PROMPT
    screen.query_one("#prompt").focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.result is not None)
    screen.query_one("#heatmap").move_to(4, 1)  # (the first heatmap opens on its first feature's peak)
    await wait_for(pilot, lambda: screen.detail is not None and screen.detail.pos == 4)
    await wait_for(pilot, lambda: "dashboards" in str(screen.query_one("#feature-summary").render()))


def test_explore(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=explored)


def test_explore_wide(snap_compare, app):
    assert snap_compare(app, terminal_size=(140, 40), run_before=explored)


def test_feature_and_trace(snap_compare, app):
    async def run(pilot):
        await explored(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "view", None) is not None)
        await pilot.press("t")
        await wait_for(pilot, lambda: pilot.app.screen.trace is not None)

    assert snap_compare(app, terminal_size=SIZE, run_before=run)


@pytest.mark.parametrize("key", ["3", "4", "5", "6", "7"])
def test_other_screens(snap_compare, app, key):
    async def run(pilot):
        await wait_for(pilot, lambda: pilot.app.engine.info is not None)
        pilot.app.screen.query_one("#heatmap").focus()
        await pilot.press(key)
        await pilot.pause(0.2)
        no_blink(pilot.app)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=run)


def test_help(snap_compare, app):
    async def run(pilot):
        await wait_for(pilot, lambda: pilot.app.engine.info is not None)
        pilot.app.screen.query_one("#heatmap").focus()
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=run)


# ---- issue 20: the study screen, a running job, an error state (all at 80x24, with its footer) ------------------


@pytest.fixture
def study_app(tiny_model, tmp_path, monkeypatch):
    """The snapshot app with its two layers' dashboards built (what the study samples from) and a private label
    file."""
    from support import TINY_TEXT

    from sae.analysis.dashboards import DashboardSpec, build_dashboards

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ATTNSCOPE_LABELS", str(tmp_path / "labels.json"))
    saes = {0: random_sae(tiny_model, 0, d_sae=24, seed=1), 1: random_sae(tiny_model, 1, d_sae=24, seed=2)}
    docs = [TINY_TEXT[i : i + 400] for i in range(0, 4000, 400)]
    spec = DashboardSpec(n_tokens=32 * 8, context=3, n_top=5, n_samples=4, n_dfa=2, context_size=32, n_logits=3)
    for layer, sae in saes.items():
        build_dashboards(tiny_model, sae, layer, spec, docs=docs)
    engine = Engine.from_objects(tiny_model, saes, "random-saes")
    engine.model_spec = "tiny"
    engine.info = dataclasses.replace(engine.info, model="tiny")
    return WorkbenchApp(engine, findings=FindingsStore(tmp_path))


def test_study(snap_compare, study_app):
    async def run(pilot):
        app = pilot.app
        await wait_for(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("8")
        await wait_for(pilot, lambda: app.current_mode == "study")
        screen = app.screen
        await wait_for(pilot, lambda: screen.items and screen.view is not None)
        await pilot.press("c", "r", "y")  # the third family, rated yes
        await pilot.pause(0.3)

    assert snap_compare(study_app, terminal_size=SIZE, run_before=run)


def test_running_job(snap_compare, app):
    from sae.engine.jobs import Progress

    def fake_training(rep):
        rep.progress(Progress("train", 3000, 10000, unit="tokens", stage="step 3/10", rate=1000.0,
                              metrics={"loss": 0.5, "l0": 12.0, "explained_variance": 0.8, "dead_fraction": 0.1}))
        t0 = time.monotonic()
        while not rep.cancelled and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        return {}

    async def run(pilot):
        app = pilot.app
        await wait_for(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("6")
        await pilot.pause(0.2)
        tr = app.screen
        no_blink(app)
        job = app.engine.start_job("train", fake_training, tr.post_message, label="training", key="train")
        tr.out_dir = "runs/workbench"
        tr.started(job, "starting training into runs/workbench ...")
        await wait_for(pilot, lambda: tr.last_info is not None)
        await pilot.pause(0.5)  # the job line polls a few times a second

    assert snap_compare(app, terminal_size=SIZE, run_before=run)


def test_error_state(snap_compare, app):
    async def run(pilot):
        app = pilot.app
        await wait_for(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("s")
        await pilot.pause(0.2)
        ask = app.screen
        no_blink(app)
        ask.query_one("#ask-input").value = "./nope/saes"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not ask and "no such" in str(
            app.screen.query_one("#ask-error").render()) if app.screen.query("#ask-error") else False)
        no_blink(app)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run)
