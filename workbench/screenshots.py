"""`attnscope screenshots`: drive the workbench headless through every screen and save one SVG per screen."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


async def _until(pilot: Any, cond: Callable[[], bool], timeout: float) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        await pilot.pause(0.05)
    return True


async def _run_prompt(pilot: Any, prompt: str, timeout: float) -> Any:
    """Wait for the engine, type `prompt` on the explore screen and wait for its heatmap; returns the screen."""
    app = pilot.app
    await _until(pilot, lambda: app.engine.info is not None, timeout)
    explore = app.screen
    explore.query_one("#prompt").value = prompt
    explore.query_one("#prompt").focus()
    await pilot.press("enter")
    await _until(pilot, lambda: explore.result is not None, timeout)
    return explore


async def capture_first_run(app: Any, out: Path, size: tuple[int, int], prompt: str, timeout: float = 120.0) -> Path:
    """The first launch on a fresh machine: no dashboards yet, so the app builds them in the background (the job
    line above the footer) while the heatmap answers; written as `out/00-first-run.svg`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "00-first-run.svg"
    async with app.run_test(size=size) as pilot:
        await _run_prompt(pilot, prompt, timeout)
        await _until(pilot, lambda: any(h.state == "running" and h.last is not None and h.last.done > 0
                                        for h in app.engine.worker.jobs()), timeout)
        await pilot.pause(0.5)
        app.save_screenshot(filename=path.name, path=str(out))
        app.engine.worker.cancel_all()
        await _until(pilot, lambda: not app.engine.worker.jobs(), timeout)
    return path


async def capture(app: Any, out: Path, size: tuple[int, int], prompt: str, timeout: float = 300.0) -> list[Path]:
    """Walk `app` through its screens and write `out/NN-name.svg`; returns the paths written."""
    from workbench.widgets.heatmap import Heatmap

    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def shot(name: str) -> None:
        path = out / f"{len(paths) + 1:02d}-{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
        paths.append(path)

    async with app.run_test(size=size) as pilot:
        explore = await _run_prompt(pilot, prompt, timeout)
        explore.query_one(Heatmap).move_to(4, 1)  # the first heatmap starts on the first feature's peak
        await _until(pilot, lambda: explore.detail is not None and explore.detail.pos == 4, timeout)
        n_tokens = len(explore.result.tokens)
        for pos in range(5, n_tokens):  # on to the first token below where the column's feature fires
            if explore.detail.act > 0:
                break
            await pilot.press("down")
            await _until(pilot, lambda p=pos: explore.detail is not None and explore.detail.pos == p, timeout)
        await pilot.pause(0.3)
        shot("explore")
        explore.query_one(Heatmap).focus()
        await pilot.press("enter")
        await _until(pilot, lambda: getattr(app.screen, "view", None) is not None, timeout)
        shot("feature")
        await pilot.press("t")
        await _until(pilot, lambda: app.screen.trace is not None, timeout)
        await pilot.pause(0.2)
        shot("trace")
        await pilot.press("3")
        # the survey runs as a job with progress lines: wait for its grid, not for the status line to change
        await _until(pilot, lambda: getattr(app.screen, "survey", None) is not None and app.screen.job is None, timeout)
        await pilot.pause(0.3)
        shot("heads")
        await pilot.press("4")  # the experiments run at their default N
        await pilot.press("r")
        await _until(pilot, lambda: app.screen.job is not None and not app.screen.job.running, timeout)
        await pilot.pause(0.2)
        shot("induction")
        await pilot.press("5")
        await pilot.press("r")
        await _until(pilot, lambda: app.screen.job is not None and not app.screen.job.running, timeout)
        await pilot.pause(0.2)
        shot("ioi")
        await pilot.press("6")
        await pilot.pause(0.2)
        shot("training")
        await pilot.press("1", "p")
        await pilot.pause(0.2)
        await pilot.press(*"example pin", "enter")
        await pilot.press("7")
        await pilot.pause(0.3)
        shot("findings")
        await pilot.press("1", "question_mark")
        await pilot.pause(0.2)
        shot("help")
        await pilot.press("escape")
        await study_shot(pilot, app, shot, timeout)
        await intervene_shot(pilot, app, shot, timeout)
    return paths


async def intervene_shot(pilot: Any, app: Any, shot: Callable[[str], None], timeout: float) -> None:
    """The explore screen after `a`: the selected feature ablated at its cell, the prediction before / after."""
    from workbench.widgets.heatmap import Heatmap

    app.screen.set_focus(None)
    await pilot.press("1")
    explore = app.screen
    hm = explore.query_one(Heatmap)
    hm.focus()
    values = explore.result.values
    last = len(explore.result.tokens) - 1
    hm.move_to(last, int(values[last].argmax()) if values is not None else 0)  # the strongest feature on the last token
    await _until(pilot, lambda: explore.detail is not None and explore.detail.pos == last
                 and explore.predictions is not None, timeout)
    await pilot.press("a")
    if not await _until(pilot, lambda: explore.intervention is not None, timeout):
        raise RuntimeError(f"the intervention did not come back within {timeout:.0f} s: no shot taken")
    await pilot.pause(0.3)
    shot("intervene")


async def study_shot(pilot: Any, app: Any, shot: Callable[[str], None], timeout: float) -> None:
    """The study screen with its first feature labelled (into the engine's label file, a temp file here)."""
    app.screen.set_focus(None)
    await pilot.press("8")
    if not await _until(pilot, lambda: getattr(app.screen, "MODE", "") == "study"
                        and bool(app.screen.items) and app.screen.view is not None, timeout):
        raise RuntimeError(f"the study screen did not show a feature within {timeout:.0f} s: no shot taken")
    await pilot.press("c", "r", "y")  # a family (letters: digits switch screens), then rate it yes
    await pilot.pause(0.3)
    shot("study")


def _ensure_dashboards(model: str, saes: str, device: str) -> None:
    """The feature and heads screens show dashboards: build any that are missing (cached, so usually instant)."""
    from sae.analysis.dashboards import DashboardSpec, build_layers
    from sae.zoo import corpus_texts, load_model, load_sae_set

    m = load_model(model, device=device)
    spec = DashboardSpec()
    build_layers(m, load_sae_set(saes, model=m, device=m.device), spec, docs=lambda: corpus_texts(spec.corpus, "heldout"))


def write_screenshots(
    out: str | Path = "screenshots", model: str = "default", saes: str = "default", device: str = "auto",
    size: tuple[int, int] = (120, 36), prompt: str | None = None,
) -> list[Path]:
    """Regenerate the README's screenshots on the given model and SAEs (findings go to a temp dir)."""
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.findings import FindingsStore
    from workbench.session import Session

    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    prompt = prompt or DEFAULT_PROMPT
    with tempfile.TemporaryDirectory() as tmp:
        store = FindingsStore(Path(tmp) / "findings")
        # first run: an empty dashboard cache, as on a fresh machine
        saved = os.environ.get("ATTNSCOPE_CACHE_DIR")
        os.environ["ATTNSCOPE_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            first = WorkbenchApp(Engine(model, saes, device=device), findings=store, auto_build=True,
                                 session=Session(Path(tmp) / "session"))
            first_path = asyncio.run(capture_first_run(first, Path(out), size, prompt))
        finally:
            if saved is None:
                os.environ.pop("ATTNSCOPE_CACHE_DIR", None)
            else:
                os.environ["ATTNSCOPE_CACHE_DIR"] = saved
        _ensure_dashboards(model, saes, device)
        engine = Engine(model, saes, device=device)
        engine.labels_path = Path(tmp) / "labels.json"  # the study screen's example label stays out of the user's file
        app = WorkbenchApp(engine, findings=store, session=Session(Path(tmp) / "session"))
        return [first_path, *asyncio.run(capture(app, Path(out), size, prompt))]
