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


async def capture(app: Any, out: Path, size: tuple[int, int], prompt: str, timeout: float = 120.0) -> list[Path]:
    """Walk `app` through its screens and write `out/NN-name.svg`; returns the paths written."""
    from workbench.widgets.heatmap import Heatmap

    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def shot(name: str) -> None:
        path = out / f"{len(paths) + 1:02d}-{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
        paths.append(path)

    async with app.run_test(size=size) as pilot:
        await _until(pilot, lambda: app.engine.info is not None, timeout)
        explore = app.screen
        explore.query_one("#prompt").value = prompt
        explore.query_one("#prompt").focus()
        await pilot.press("enter")
        await _until(pilot, lambda: explore.result is not None, timeout)
        await pilot.press("down", "down", "down", "down", "right")
        await _until(pilot, lambda: explore.detail is not None and explore.detail.pos == 4, timeout)
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
        await _until(pilot, lambda: app.screen.query_one("#heads-status").message != "surveying heads ...", timeout)
        shot("heads")
        await pilot.press("4")
        app.screen.query_one("#ind-n").value = "8"
        await pilot.press("r")
        await _until(pilot, lambda: app.screen.job is not None and not app.screen.job.running, timeout)
        await pilot.pause(0.2)
        shot("induction")
        await pilot.press("5")
        app.screen.query_one("#ioi-n").value = "8"
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
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        shot("help")
        await pilot.press("escape")
        await study_shot(pilot, app, shot, timeout)
    return paths


async def study_shot(pilot: Any, app: Any, shot: Callable[[str], None], timeout: float) -> None:
    """The study screen with its first feature labelled (into the engine's label file, a temp file here)."""
    app.screen.set_focus(None)
    await pilot.press("8")
    await _until(pilot, lambda: getattr(app.screen, "MODE", "") == "study", timeout)
    await _until(pilot, lambda: bool(app.screen.items) and app.screen.view is not None, timeout)
    await pilot.press("3", "r", "2")
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

    _ensure_dashboards(model, saes, device)
    with tempfile.TemporaryDirectory() as tmp:
        store = FindingsStore(Path(tmp))
        os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
        engine = Engine(model, saes, device=device)
        engine.labels_path = Path(tmp) / "labels.json"  # the study screen's example label stays out of the user's file
        app = WorkbenchApp(engine, findings=store)
        return asyncio.run(capture(app, Path(out), size, prompt or DEFAULT_PROMPT))
