"""A workbench a researcher can trust with real work (issue 20): no silent overwrites, no keys that write data, global
keys with one meaning, figures that render. Pilot tests on a tiny model with random SAEs."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.screens.modals import AskScreen
from support import settle, type_prompt

pytestmark = pytest.mark.usefixtures("data_dir")


def finished_run(model, root: Path) -> Path:
    """A directory as a finished training run leaves it: one SAE dir and a checkpoint."""
    from support import random_sae

    from sae.engine.formats import save_sae

    save_sae(random_sae(model, 0, d_sae=16), root / "blocks.0.attn.hook_z")
    (root / "checkpoint.pt").write_bytes(b"finished")
    return root


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- 1. the training screen never overwrites a finished run -----------------------------------------------------


async def test_training_r_over_a_finished_run_asks_for_a_new_directory(app, tiny_model, tmp_path):
    run = finished_run(tiny_model, tmp_path / "run")
    before = snapshot_files(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("6")
        await pilot.pause()
        tr = app.screen
        for wid, value in (("tr-layers", "0"), ("tr-width", "16"), ("tr-tokens", "2000"), ("tr-batch", "64"),
                           ("tr-out", str(run))):
            tr.query_one(f"#{wid}").value = value
        app.set_focus(None)
        await pilot.press("r")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        assert "already holds a training run" in app.screen.question
        assert app.screen.query_one("#ask-input").value == f"{run}-2"
        assert tr.job is None  # nothing started yet
        await pilot.press("escape")
        await settle(pilot, lambda: app.screen is tr)
        assert tr.job is None and "keeps its run" in tr.query_one("#train-status").message
        # a path that holds a run too is refused inline
        await pilot.press("r")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        app.screen.query_one("#ask-input").value = str(run)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, AskScreen)
        assert "holds a training run too" in str(app.screen.query_one("#ask-error").render())
        app.screen.query_one("#ask-input").value = f"{run}-2"
        await pilot.press("enter")
        await settle(pilot, lambda: tr.job is not None)
        assert tr.query_one("#tr-out").value == f"{run}-2"
        await settle(pilot, lambda: not tr.job.running, timeout=120)
    assert snapshot_files(run) == before


def test_engine_refuses_a_fresh_run_over_a_finished_one(tiny_model, saes, tmp_path):
    from workbench.engine import Engine, EngineError, free_run_dir

    run = finished_run(tiny_model, tmp_path / "run")
    engine = Engine.from_objects(tiny_model, saes, "random")
    try:
        with pytest.raises(EngineError, match="already holds a training run"):
            engine.train({"layers": [0]}, corpus="default", out_dir=str(run), resume=False, post=lambda m: None)
    finally:
        engine.close()
    finished_run(tiny_model, tmp_path / "run-2")
    assert free_run_dir(run) == f"{run}-3"
    assert free_run_dir(tmp_path / "empty") == str(tmp_path / "empty")


# ---- 2. global keys keep one meaning on every screen ---------------------------------------------------------


def _global_keys() -> set[str]:
    from workbench.app import WorkbenchApp

    keys = {"question_mark"} | {str(d) for d in range(10)}
    keys |= {k.strip() for b in WorkbenchApp.BINDINGS for k in b.key.split(",") if k.strip().startswith("ctrl+")}
    return keys


def test_no_screen_or_widget_rebinds_a_global_key():

    from workbench.app import WorkbenchApp
    from workbench.widgets import bars, heatmap, jobbar, sparklines

    owners = list(WorkbenchApp.MODES.values())
    for module in (bars, heatmap, jobbar, sparklines):
        owners += [v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "BINDINGS")]
    glob = _global_keys()
    assert {"1", "7", "8", "question_mark", "ctrl+q", "ctrl+x"} <= glob
    app_action = {k.strip(): b.action for b in WorkbenchApp.BINDINGS for k in b.key.split(",")}
    for owner in owners:
        for b in [b for bs in owner._merge_bindings().key_to_bindings.values() for b in bs]:
            rebound = {k for k in {b.key} & glob if b.action != f"app.{app_action.get(k, '')}"}
            assert not rebound, f"{owner.__name__} rebinds {rebound} to {b.action}"


async def test_digit_on_the_study_screen_switches_screen_and_writes_no_label(tiny_model, saes, tmp_path, monkeypatch):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.findings import FindingsStore
    from workbench.screens.study import StudyScreen

    from sae.analysis.labels import LabelStore

    labels = tmp_path / "labels.json"
    monkeypatch.setenv("ATTNSCOPE_LABELS", str(labels))
    engine = Engine.from_objects(tiny_model, saes, "random")
    app = WorkbenchApp(engine, findings=FindingsStore(tmp_path / "findings"))
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("8")
        await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
        await pilot.pause(0.3)
        await pilot.press("2")
        await settle(pilot, lambda: app.current_mode == "feature")
    assert not labels.exists() or LabelStore(labels).labels() == []


async def test_back_on_explore_letters_act_on_the_heatmap_not_in_the_prompt(app):
    """Explore shown again with nothing focused gave the focus to the first field, the prompt: `t` then typed a
    letter into it instead of tracing."""
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        explore, before = app.screen, app.screen.query_one("#prompt").value
        app.set_focus(None)
        await pilot.press("3")
        await settle(pilot, lambda: app.current_mode == "heads")
        await pilot.press("1")
        await settle(pilot, lambda: app.screen is explore)
        await pilot.pause(0.2)
        assert app.focused is explore.query_one("#heatmap")
        await pilot.press("t")
        await settle(pilot, lambda: app.current_mode == "feature")
        assert explore.query_one("#prompt").value == before


async def test_the_nav_line_lists_every_screen_with_the_digit_that_reaches_it(app):
    """The study screen too (it was reachable by 8 but missing from the line), whole at 80 columns; each digit goes
    where the line says, from every screen."""
    from workbench.app import WorkbenchApp
    from workbench.screens.base import NavBar

    modes = set(WorkbenchApp.MODES)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        seen = set()
        for digit in [str(d) for d in range(1, len(modes) + 1)]:
            await pilot.press(digit)
            await pilot.pause(0.1)
            shown = app.screen.query_one(NavBar).render().plain
            assert len(shown) <= 80, shown
            words = shown.split()
            listed = dict(zip(words[0::2], words[1::2]))
            assert sorted(listed) == [str(d) for d in range(1, len(modes) + 1)], shown
            assert app.current_mode.lower().startswith(listed[digit].lower()[:3]), (digit, app.current_mode, shown)
            seen.add(app.current_mode)
            app.set_focus(None)
        assert seen == modes


# ---- 3. export asks before replacing and defaults to the data dir ------------------------------------------------


async def test_export_defaults_to_the_data_dir_and_asks_before_replacing(app, data_dir, tmp_path):
    from workbench.findings import Finding
    from workbench.screens.modals import ConfirmScreen

    notes: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
        app.findings.add(Finding(kind="note", title="first", body="one"))
        app.screen.query_one("#heatmap").focus()
        await pilot.press("e")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        default = app.screen.query_one("#ask-input").value
        assert Path(default).parent == data_dir and Path(default).name == "attnscope-findings.md"
        target = tmp_path / "report.md"
        target.write_text("my own notes\n")
        app.screen.query_one("#ask-input").value = str(target)
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert str(target) in app.screen.question
        await pilot.press("n")  # keeps the file and asks again
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        assert target.read_text() == "my own notes\n"
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await settle(pilot, lambda: not isinstance(app.screen, (AskScreen, ConfirmScreen)))
    assert "first" in target.read_text()
    assert any("replaced" in n and str(target) in n for n in notes), notes


# ---- 4. escape never changes screen silently; a letter that replaces a result asks ----------------------------


async def test_escape_on_explore_stays_and_elsewhere_goes_home_saying_so(app):
    from workbench.screens.modals import ConfirmScreen

    notes: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
        app.screen.query_one("#heatmap").focus()
        await pilot.press("4")
        await pilot.pause()
        ind = app.screen
        await pilot.press("1")
        await pilot.pause()
        await pilot.press("escape")  # on explore's heatmap: stays (it used to go back to induction)
        await pilot.pause()
        assert app.current_mode == "explore" and "home screen" in notes[-1]
        await pilot.press("5")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.current_mode == "explore" and "back to explore" in notes[-1]
        # r over a result on screen asks; n keeps it and starts nothing
        await pilot.press("4")
        await pilot.pause()
        shown = object()
        ind.result = shown
        await pilot.press("r")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await settle(pilot, lambda: app.screen is ind)
        assert ind.job is None and ind.result is shown


# ---- 5. / and the note editor keep the text: the first key edits, never replaces ---------------------------------


async def test_slash_and_the_note_editor_do_not_select_the_text(app):
    from workbench.findings import Finding

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        prompt = app.screen.query_one("#prompt")
        prompt.value = "The cat sat"
        app.screen.query_one("#heatmap").focus()
        await pilot.pause()
        await pilot.press("slash")
        await pilot.pause()
        await pilot.press("s")
        assert prompt.value == "The cat sats"
        app.findings.add(Finding(kind="note", title="one", body="", note="my careful note"))
        await pilot.press("escape")
        await pilot.press("7")
        await settle(pilot, lambda: app.current_mode == "findings")
        await pilot.pause(0.2)
        await pilot.press("n")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        await pilot.pause()
        await pilot.press("!")
        assert app.screen.query_one("#ask-input").value == "my careful note!"


async def test_ctrl_z_undoes_edits_in_the_prompt_and_the_note_editor(app):
    """Textual's Input has no undo: a word typed, a select-all-and-type, a prompt from the history are each one
    ctrl+z away (ctrl+y redoes); up / down still walk the prompt history."""
    from workbench.findings import Finding

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.remember_prompt("An earlier prompt")
        prompt = app.screen.query_one("#prompt")
        app.screen.query_one("#heatmap").focus()
        await pilot.press("slash")
        await pilot.press(*"The cat", "space", *"sat")
        assert prompt.value == "The cat sat"
        await pilot.press("ctrl+z")
        assert prompt.value == "The cat "  # the last word, as one step
        await pilot.press("ctrl+z")
        assert prompt.value == "The cat"
        await pilot.press("ctrl+y", "ctrl+y")
        assert prompt.value == "The cat sat"
        await pilot.press("up")  # the history replaces the text ...
        assert prompt.value == "An earlier prompt"
        await pilot.press("ctrl+z")  # ... and undo brings the typed text back
        assert prompt.value == "The cat sat"
        await pilot.press("escape")
        app.findings.add(Finding(kind="note", title="one", body="", note="my careful note"))
        await pilot.press("7")
        await settle(pilot, lambda: app.current_mode == "findings")
        await pilot.pause(0.2)
        await pilot.press("n")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        await pilot.pause()
        box = app.screen.query_one("#ask-input")
        await pilot.press("ctrl+u")  # delete everything left of the cursor: the whole note ...
        await pilot.press(*"oops")
        assert box.value == "oops"
        await pilot.press("ctrl+z", "ctrl+z")  # ... undone in two steps
        assert box.value == "my careful note"
        assert box.cursor_position == len("my careful note")
        await pilot.press("enter")
        await settle(pilot, lambda: not isinstance(app.screen, AskScreen))
    assert [f.note for f in app.findings.findings] == ["my careful note"]


# ---- 7. a feature opened without a position traces where it is strongest, and the root says if it fires -----------


async def test_feature_opened_from_elsewhere_traces_where_it_fires_not_at_an_old_position(app):
    import numpy as np

    from support import type_prompt

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        res = app.screen.result
        v = np.asarray(res.values)
        c = next(c for c in range(v.shape[1]) if v[:, c].max() > 0 and v[:, c].min() == 0)  # fires on some tokens
        feature, strongest = res.columns[c], int(np.argmax(v[:, c]))
        off = int(np.argmin(v[:, c]))
        assert v[off, c] == 0 and off != strongest
        # opened from explore at a token where it does not fire: t traces there and says so
        app.show_feature(res.layer, feature, pos=off)
        await pilot.pause()
        fs = app.screen
        await pilot.press("t")
        await settle(pilot, lambda: fs.trace is not None and fs.trace.pos == off)
        assert "does not fire here" in str(fs.trace_root_text()) and "act 0.000" in str(fs.trace_root_text())
        # opened again as the heads screen or the palette do (no position): traced where it is strongest
        app.switch_mode("heads")
        await pilot.pause()
        app.show_feature(res.layer, feature)
        await pilot.pause()
        assert fs.trace_pos is None
        await pilot.press("t")
        await settle(pilot, lambda: fs.trace is not None and fs.trace.pos == strongest)
        assert "does not fire" not in str(fs.trace_root_text())
        assert f"act {v[strongest, c]:.3f}" in str(fs.trace_root_text())


async def test_at_80_columns_the_trace_root_of_a_silent_cell_shows_that_it_does_not_fire(app):
    """The warning ended the root's line, past the tree's edge at 80 columns: it comes first now."""
    import numpy as np

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        res = app.screen.result
        v = np.asarray(res.values)
        c = next(c for c in range(v.shape[1]) if v[:, c].max() > 0 and v[:, c].min() == 0)
        app.show_feature(res.layer, res.columns[c], pos=int(np.argmin(v[:, c])))
        await pilot.pause()
        fs = app.screen
        await pilot.press("t")
        await settle(pilot, lambda: fs.trace is not None)
        await pilot.pause(0.3)
        tree = fs.query_one("#trace-tree")
        visible = tree.scrollable_content_region.width - 2  # the root's expand mark and its space
        assert "does not fire here" in fs.trace_root_text().plain[:visible], (visible, fs.trace_root_text().plain)


# ---- 6. exported figures are as wide as their content: each heatmap row is one line -------------------------------


def _svg_rows(text: str) -> int:
    import re

    return len(set(re.findall(r'<text class="[^"]*-r\d+"[^>]*clip-path="url\(#[^)]*-line-(\d+)\)"', text)))


def test_a_wide_heatmap_figure_draws_each_row_on_one_line():
    from workbench.figures import heatmap_renderable, svg

    tokens = ["When", " Mary", " and", " John", " went", " to", " the", " store"]
    columns = list(range(1000, 1016))  # 16 features: ~114 columns of text
    values = [[float((r * 7 + c) % 5) for c in range(16)] for r in range(len(tokens))]
    text = svg(heatmap_renderable(tokens, columns, values, pos=2, col=3), "heatmap")
    assert _svg_rows(text) == 1 + len(tokens) + 1  # header, one row per token, the legend
    narrow = svg(heatmap_renderable(tokens, columns[:2], [row[:2] for row in values]), "heatmap")
    assert _svg_rows(narrow) == 1 + len(tokens) + 1


# ---- 9. the SAE set shown is named; a typo in its path is a short, whole error -----------------------------------


async def test_opening_saes_names_the_set_and_a_typo_is_a_whole_local_error(app, tiny_model, tmp_path, monkeypatch):
    from support import sae_set_dir

    saes_dir = sae_set_dir(tiny_model, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        explore = app.screen
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        app.screen.query_one("#ask-input").value = "runs/sae"  # a typo of runs/saes
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen)
                     and str(app.screen.query_one("#ask-error").render()).strip())
        err = app.screen.query_one("#ask-error")
        message = str(err.render())
        assert "no such SAE directory: runs/sae" in message and "release" not in message and "saes" in message
        assert err.size.height * err.size.width >= len(message)  # wrapped, not cut
        app.screen.query_one("#ask-input").value = str(saes_dir)
        await pilot.press("enter")
        await settle(pilot, lambda: app.engine.info.saes == str(saes_dir) and app.screen is explore)
        await pilot.pause(0.2)
        assert f"SAEs …/{saes_dir.parent.name}/saes" in explore.query_one("#explore-status").message


# ---- 10. a new dashboard starts at its top; the status line follows the trace ------------------------------------


@pytest.fixture
def built(tiny_model, data_dir):
    """Random SAEs for layers 0 and 1 with their dashboards built (tall pages)."""
    from support import TINY_TEXT, random_sae

    from sae.analysis.dashboards import DashboardSpec, build_dashboards

    saes = {0: random_sae(tiny_model, 0, d_sae=24, seed=1), 1: random_sae(tiny_model, 1, d_sae=24, seed=2)}
    docs = [TINY_TEXT[i : i + 400] for i in range(0, 4000, 400)]
    spec = DashboardSpec(n_tokens=32 * 8, context=3, n_top=5, n_samples=4, n_dfa=2, context_size=32, n_logits=3)
    for layer, sae in saes.items():
        build_dashboards(tiny_model, sae, layer, spec, docs=docs)
    return saes


async def test_new_dashboard_starts_at_the_top_and_a_closed_trace_leaves_the_status(tiny_model, built):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from support import type_prompt

    app = WorkbenchApp(Engine.from_objects(tiny_model, built, "random"), start_layer=0)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        app.show_feature(0, 3)
        await pilot.pause()
        fs = app.screen
        await settle(pilot, lambda: fs.view is not None and fs.view.feature == 3)
        scroll = fs.query_one("#dashboard-scroll")
        await pilot.pause(0.2)
        assert scroll.max_scroll_y > 5
        scroll.scroll_to(y=scroll.max_scroll_y, animate=False)
        await pilot.pause(0.2)
        assert scroll.scroll_y > 0
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: fs.view.feature == 4)
        await pilot.pause(0.2)
        assert scroll.scroll_y == 0
        await pilot.press("t")
        await settle(pilot, lambda: fs.trace is not None)
        status = fs.query_one("#feature-status")
        assert status.message.startswith("trace of L0 F4")
        await pilot.press("escape")  # closes the trace
        await pilot.pause()
        assert "trace" not in status.message and status.message.startswith("L0 feature 4")
        # while a trace runs, a dashboard build's progress does not hide that it is tracing
        fs.tracing = "tracing L0 F4 ..."
        fs.say("building dashboards of layer 0")
        assert "tracing L0 F4" in status.message and "building" in status.message


async def test_side_panel_marks_the_previous_cell_as_pending_while_a_job_holds_the_engine(app):
    """After ] during a job, the side panel keeps the previous layer's cell until a job step serves the new one: it
    must say so (as the status line says so for the heatmap), and stop saying so once the new cell is shown."""
    import threading

    from support import slow_job

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        screen = app.screen
        await pilot.press("left_square_bracket")  # layer 0 (the app starts on layer 1)
        await type_prompt(pilot, app)
        await settle(pilot, lambda: screen.detail is not None and screen.result.layer == 0)
        pending = screen.query_one("#side-pending")
        side = screen.query_one("#explore-side")
        assert not pending.display and not side.has_class("-pending")
        started, release = threading.Event(), threading.Event()
        job = app.engine.start_job("slow", slow_job(started, release, period_s=1.5), app.post_message,
                                   label="slow job")
        try:
            await settle(pilot, started.is_set)
            await pilot.pause(0.1)
            await pilot.press("right_square_bracket")
            await pilot.pause(0.2)
            assert screen.result.layer == 0  # the heatmap and the panel still show layer 0 ...
            assert "L0 feature" in str(screen.query_one("#cell-title").render())
            assert pending.display and side.has_class("-pending")  # ... and the panel says it is not current
            mark = str(pending.render())
            assert "pending" in mark and "layer 1" in mark and "slow job" in mark
            # the job's next step serves the heatmap, then the cell: the mark goes with the old cell
            await settle(pilot, lambda: screen.result.layer == 1 and "L1 feature" in str(
                screen.query_one("#cell-title").render()), timeout=20)
            await settle(pilot, lambda: not pending.display)
            assert not side.has_class("-pending")
        finally:
            release.set()
            job.cancel()
        await settle(pilot, job.done.is_set)


# ---- 11. heads are named L0H2 everywhere; DFA bars have a scale ----------------------------------------------------


def test_small_values_draw_small_bars_against_a_given_scale():
    from workbench.widgets.bars import signed_bars

    line = str(signed_bars(["L0H0"], [0.09], width=20, scale=3.0))
    assert "█" not in line and "+0.090" in line  # 0.09 of 3.0 is under a cell, not a full bar
    assert "██████████" in str(signed_bars(["L0H0"], [0.09], width=20))  # no scale: the largest value fills


async def test_explore_names_heads_like_the_cli_and_says_what_a_full_bar_is(app):
    from support import type_prompt

    from sae.cli import induction as cli_induction

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await settle(pilot, lambda: app.screen.detail is not None)
        await pilot.pause(0.2)
        bars = app.screen.query_one("#head-bars")
        assert bars.labels == [f"L1H{h}" for h in range(4)]
        assert bars.scale_line.startswith("full bar ")
        peak = app.screen.feature_peak(app.screen.detail.feature)
        assert f"{max(peak, max(abs(v) for v in bars.values)):.3f}" in bars.scale_line
        await pilot.press("t")
        await settle(pilot, lambda: app.current_mode == "feature" and app.screen.trace is not None)
        heads = [c.label for c in app.screen.trace.root.children if c.kind == "head"]
        assert heads and all(h.startswith("head L1H") for h in heads)
    r = {"model": "m", "n_per_length": 1, "seq_len": 4, "prefix_lengths": [1], "seed": 0, "rule": "r",
         "sampling": "attnscope", "design": "d", "mean_query_pos": 2.0,
         "heads": [{"layer": 0, "head": 2, "kind": "short-prefix", "scores": {"1": 0.5}, "dla": {"1": 0.0}}]}
    head, tables = cli_induction.tables(r)
    assert tables[0][2][0][0] == "L0H2" and "L0H2 (short-prefix)" in head


async def test_pattern_screen_and_html_export_name_heads_like_the_cli(app, tmp_path):
    """The attention pattern's title and the HTML page's head bars said `1.0` where everything else says `L1H0`."""
    from workbench.findings import Finding
    from workbench.html_export import export_html

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await settle(pilot, lambda: app.screen.detail is not None)
        await pilot.press("v")
        await settle(pilot, lambda: getattr(app.screen, "pattern_view", None) is not None)
        title = str(app.screen.query_one("#pattern-title").render())
        assert f"head L1H{app.screen.p_head} " in title, title
    page = export_html([Finding(kind="cell", title="t", layer=1, data={"dfa_heads": [0.5, -0.25], "dfa_bias": 0.1,
                                                                         "head_shares": [0.3, 0.7]})])
    assert page.count(">L1H0<") == 2 and page.count(">L1H1<") == 2 and ">1.0<" not in page


# ---- 12. the workbench's quick experiment runs say so, with the CLI command for the full one ----------------------


def _cli_default(command: str, flag: str) -> int:
    import argparse

    from sae.cli import induction, ioi

    sub = argparse.ArgumentParser().add_subparsers()
    {"induction": induction, "ioi": ioi}[command].register(sub)
    return sub.choices[command].get_default(flag)


async def test_quick_experiment_runs_say_so_and_give_the_full_cli_command(app):
    from workbench.screens.experiments import ioi_quick_note

    n_ind, n_ioi = _cli_default("induction", "n"), _cli_default("ioi", "n")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("4")
        await pilot.pause()
        n = int(app.screen.query_one("#ind-n").value)
        note = str(app.screen.query_one("#ind-rule").render())
        assert n < n_ind and "quick run" in note and f"attnscope induction --n {n_ind}" in note
        await pilot.press("5")
        await pilot.pause()
        n = int(app.screen.query_one("#ioi-n").value)
        note = str(app.screen.query_one("#ioi-note").render())
        assert n < n_ioi and "quick run" in note and f"attnscope ioi -e heads --n {n_ioi}" in note
    assert "quick" not in ioi_quick_note("clean", n_ioi, None)


# ---- 13. IOI: every bar reads differently, terms explained, accuracy a share, the layer box only where it counts ---


def test_ioi_bars_are_distinct_and_noising_shows_its_results():
    from workbench.engine.views import experiment_view
    from workbench.screens.experiments import bar_label, format_cell, references_line, unique_labels

    path = [{"feature": 443, "heads": "L2H0,L2H1,L2H2,L2H3", "delta": -0.01},
            {"feature": 443, "heads": "L2H1", "delta": -0.01}, {"feature": 169, "heads": "L2H1", "delta": 0.0}]
    splice = [{"layers": "all", "error_term": False, "recovered": 0.85}, {"layers": "all", "error_term": True},
              {"layers": "0", "error_term": False}]
    noising = [{"corruption": "names", "layers": "0"}, {"corruption": "names_abs", "layers": "0"},
               {"corruption": "names", "layers": "0,1"}]
    for rows in (path, splice, noising):
        labels = unique_labels([bar_label(r) for r in rows])
        assert len(set(labels)) == len(labels), labels
    assert unique_labels(["F1", "F1"]) == ["F1", "F1 #2"]
    assert format_cell("accuracy", 1.0) == "100%"
    from sae.experiments.ioi_results import (
        CleanResult, IOISettings, NoisingResult, NoisingRow, OrderRow, ReferenceRow,
    )

    st = IOISettings(model="m", n_prompts=8, seed=0, split="all", bos=True)
    refs = (ReferenceRow("clean", 8.0, 1.0), ReferenceRow("S2-only", 4.0, 0.5))
    out = NoisingResult(experiment="noising", settings=st, clean_logit_diff=8.0, position="END", layers=(0,),
                        corruptions={"names": "new names"}, recovered_is="r", references=refs, references_are="a",
                        results=(NoisingRow("names", "0", 7.0, 0.875),), skipped=())
    v = experiment_view(out)
    assert list(v.records[0]) == ["corruption", "layers", "logit_diff", "recovered"]
    line = references_line([{"reference": r.reference, "logit_diff": r.logit_diff, "fraction": r.fraction}
                            for r in refs])
    assert "S2-only +4.00 (50%)" in line and "only S2 replaced by a third name" in line
    clean = CleanResult(experiment="clean", settings=st, clean_logit_diff=1.0, accuracy=1.0,
                        by_order=(OrderRow("ABBA", 1.0, 1.0),))
    assert "accuracy 100%" in experiment_view(clean).summary


async def test_ioi_layer_box_only_for_the_experiments_that_read_it(app):
    from textual.widgets import Select

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("5")
        await pilot.pause()
        ioi = app.screen
        assert not ioi.query_one("#ioi-layer").display  # heads ignores it
        ioi.query_one("#ioi-exp", Select).value = "features"
        await pilot.pause()
        assert ioi.query_one("#ioi-layer").display
        ioi.query_one("#ioi-exp", Select).value = "noising"
        await pilot.pause()
        assert not ioi.query_one("#ioi-layer").display


# ---- 14. u after a relaunch resumes with the run's own settings, shown in the form ---------------------------------


async def test_resume_after_a_relaunch_uses_the_runs_saved_settings(tiny_model, saes, tmp_path):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.findings import FindingsStore

    run = tmp_path / "run"

    def make_app():
        return WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), findings=FindingsStore(tmp_path / "f"))

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("6")
        await pilot.pause()
        tr = app.screen
        for wid, value in (("tr-layers", "0"), ("tr-width", "16"), ("tr-sparsity", "4"), ("tr-tokens", "300000"),
                           ("tr-batch", "64"), ("tr-out", str(run))):
            tr.query_one(f"#{wid}").value = value
        app.set_focus(None)
        await pilot.press("r")
        await settle(pilot, lambda: tr.query_one("#spark-loss").values or tr.query_one("#train-status").is_error,
                     timeout=60)
        assert not tr.query_one("#train-status").is_error, tr.query_one("#train-status").message
        await pilot.press("x")
        await settle(pilot, lambda: not tr.job.running, timeout=60)
    assert (run / "checkpoint.pt").exists()

    app = make_app()  # relaunched: the form holds the defaults again
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("6")
        await pilot.pause()
        tr = app.screen
        # the form may come back from the session file (the last run started); make it differ from the run's own
        # settings, as after starting another run since, so that u must read the run's train_config.json
        tr.query_one("#tr-tokens").value, tr.query_one("#tr-width").value = "8192", "32"
        tr.query_one("#tr-out").value = str(run)
        app.set_focus(None)
        await pilot.press("u")
        await settle(pilot, lambda: tr.job is not None)
        assert tr.query_one("#tr-tokens").value == "300000" and tr.query_one("#tr-width").value == "16"
        assert tr.query_one("#tr-sparsity").value == "4"
        await settle(pilot, lambda: tr.last_info is not None and tr.last_info.done > 0
                     or tr.query_one("#train-status").is_error, timeout=60)
        assert not tr.query_one("#train-status").is_error, tr.query_one("#train-status").message
        await pilot.press("x")
        await settle(pilot, lambda: not tr.job.running, timeout=60)


# ---- 15. the trace shows its top terms by default (5% of the root); a key and a flag show every term ---------------


def _tree_values(node) -> list[tuple[float, str]]:
    out = []
    for c in node.children:
        out.append((c.data.value if c.data is not None else None, str(c.label)))
        out += _tree_values(c)
    return out


async def test_trace_tree_hides_tiny_terms_until_a(app):
    from support import type_prompt

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await settle(pilot, lambda: app.screen.detail is not None)
        await pilot.press("t")
        await settle(pilot, lambda: app.current_mode == "feature" and app.screen.trace is not None)
        await pilot.pause(0.2)
        fs = app.screen
        tree = fs.query_one("#trace-tree")
        floor = 0.05 * abs(fs.trace.root.value)

        def count(node) -> int:
            return len(node.children) + sum(count(c) for c in node.children)

        every = count(fs.trace.root)
        shown = _tree_values(tree.root)
        assert all(v is None or abs(v) >= floor for v, _ in shown)
        assert any("smaller" in label for v, label in shown if v is None)
        assert len(shown) < every
        await pilot.press("a")
        await pilot.pause(0.2)
        assert len(_tree_values(tree.root)) == every


def test_cli_trace_prints_the_top_by_default_and_everything_with_all(capsys, tiny_model, tiny_model_dir, tmp_path):
    from support import run_cli, sae_set_dir

    saes = sae_set_dir(tiny_model, tmp_path)
    base = ["trace", "When Mary and John went to the store", "--layer", "2", "--feature", "5", "--depth", "1",
            "--model", str(tiny_model_dir), "--saes", str(saes)]
    code, top, _ = run_cli(capsys, base + ["--md"])
    assert code == 0 and "smaller terms" in top
    code, everything, _ = run_cli(capsys, base + ["--md", "--all"])
    assert code == 0 and "smaller terms" not in everything
    assert len(top.splitlines()) < len(everything.splitlines())
    code, _, err = run_cli(capsys, base + ["--min-share", "2"])
    assert code == 2 and any("--min-share" in e for e in err)



# ---- 16. at 80x24 the footer keeps ? Help and ^q Quit visible on every screen ------------------------------------


async def test_help_and_quit_keys_are_visible_in_the_footer_of_every_screen_at_80_columns(app):
    from textual.widgets._footer import FooterKey

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        for key in "12345678":
            await pilot.press(key)
            await pilot.pause(0.2)
            app.set_focus(None)
            await pilot.pause(0.2)
            for wanted, label in (("question_mark", "Help"), ("ctrl+q", "Quit")):
                def laid_out(wanted=wanted):  # the footer recomposes when the focus changes: wait for its keys
                    return [k for k in app.screen.query(FooterKey) if k.key == wanted and k.region.width > 0]

                await settle(pilot, laid_out, timeout=10)
                keys = laid_out()
                region = keys[0].region  # on screen: not scrolled out of the footer, not under another key
                assert region.width > 0 and region.x >= 0 and region.right <= 80, (key, wanted, region)
                assert keys[0].description == label
                for x in (region.x, region.right - 1):  # drawn whole, nothing on top of it
                    assert app.screen.get_widget_at(x, region.y)[0] is keys[0], (key, wanted, x)


async def test_in_a_text_field_the_footer_says_how_to_leave_it_and_keeps_quit(app):
    """In the prompt `?` and letters type themselves: the footer shows esc (after which ? helps) and ^q, not keys
    that would be typed as text (it showed `/ Prompt` alone)."""
    from textual.widgets._footer import FooterKey

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("slash")

        def keys():
            return {k.key: k for k in app.screen.query(FooterKey) if k.region.width}

        await settle(pilot, lambda: "escape" in keys() and "ctrl+q" in keys(), timeout=10)
        shown = keys()
        assert "?" in shown["escape"].description and "slash" not in shown and "question_mark" not in shown
        await pilot.press("question_mark")
        assert app.screen.query_one("#prompt").value.endswith("?")  # typed, as the footer implied
        await pilot.press("escape")
        await settle(pilot, lambda: "question_mark" in keys(), timeout=10)


async def test_footer_shows_only_whole_keys_and_the_job_line_keeps_its_cancel_key_at_80_columns(app):
    """A key that does not fit before ^q / ^p is left out (the rest are in ?), never cut to `s S`; a long job line
    shortens its label, never `ctrl+x cancels`."""
    import threading

    from support import slow_job
    from textual.widgets._footer import FooterKey

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        for key in [*"12345678", "1?"]:  # last: explore again, after a modal closed over it (the footer recomposes)
            for k in key:
                await pilot.press(k)
                await pilot.pause(0.3)
            if key == "1?":
                await pilot.press("escape")
                await pilot.pause(0.3)
            app.set_focus(None)

            def footer():  # (the left edge of ^q / ^p, the other keys on screen), once laid out
                keys = [k for k in app.screen.query(FooterKey) if k.region.width]
                right = [k.region.x for k in keys if k.key in ("ctrl+p", "ctrl+q")]
                shown = [k for k in keys if k.display and k.key not in ("ctrl+p", "ctrl+q")]
                return (min(right), shown) if right and len(shown) >= 3 else None

            await settle(pilot, lambda: footer() is not None, timeout=10)
            await pilot.pause(0.3)  # the footer hides what does not fit after its layout
            await settle(pilot, lambda: footer() is not None, timeout=10)
            limit, shown = footer()
            for k in shown:
                assert k.region.right <= limit, (key, k.key, k.region, limit)
        started, release = threading.Event(), threading.Event()
        job = app.engine.start_job("slow", slow_job(started, release), app.post_message,
                                   label="head survey, layer 2: induction confirmation on many batches of prompts")
        try:
            bar = app.screen.query_one("#job-bar")
            await settle(pilot, lambda: "head survey" in str(bar.render()))
            await pilot.pause(0.5)
            line = str(bar.render())
            assert line.endswith("ctrl+x cancels") and len(line) <= bar.content_size.width, line
        finally:
            release.set()
            job.cancel()
        await settle(pilot, job.done.is_set)


async def test_heads_grid_and_role_column_are_whole_at_80_columns(app):
    """Four heads a layer and the longest role with its human-label mark fit beside each other at 80x24: neither
    table needs a sideways scroll (the role header was 44 columns and cut the roles to 'previous-toke')."""
    from textual.widgets import DataTable

    from workbench.engine import HeadFeatureView, HeadsView, HeadView

    roles = ["short-range context", "long-range context", "previous-token", "duplicate-token", "induction"]
    heads = tuple(HeadView(layer=layer, head=h, verdict="polysemantic", main_role=roles[0], features=tuple(
        HeadFeatureView(id=1000 + i, share=0.9 - 0.05 * i, role=roles[i % len(roles)], source="human" if i % 2 else "automatic")
        for i in range(10))) for layer in range(3) for h in range(4))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("3")
        await settle(pilot, lambda: app.current_mode == "heads")
        screen = app.screen
        screen.show_survey(HeadsView(heads=heads, summary="test survey", rule=""))
        await pilot.pause(0.3)
        for table_id in ("#heads-grid", "#head-features"):
            table = screen.query_one(table_id, DataTable)
            assert table.virtual_size.width <= table.scrollable_content_region.width, (
                table_id, table.virtual_size.width, table.scrollable_content_region.width)
            assert table.region.right <= 80
        features = screen.query_one("#head-features", DataTable)
        shown = [str(features.get_cell_at((r, 2))) for r in range(features.row_count)]
        assert "short-range context" in shown and "long-range context*" in shown


def test_dashboard_head_bars_fit_a_narrow_column():
    """Beside an open trace at 80 columns the dashboard is ~20 columns wide: its head bars shrink, their labels and
    values stay whole (they were cut to 'L0H0 │█…')."""
    from rich.console import Console

    from workbench.engine import DashboardView
    from workbench.screens.feature import dashboard_renderable

    view = DashboardView(layer=0, feature=400, built=False, head_shares=[0.649, -0.175, 0.064, 0.112])
    for width in (20, 30, 78):
        console = Console(width=width, record=True, color_system=None)
        console.print(dashboard_renderable(view))
        lines = console.export_text().splitlines()
        bars = [ln for ln in lines if ln.startswith("L0H")]
        assert len(bars) == 4 and not any("…" in ln for ln in bars), (width, bars)
        assert [ln.split()[-1] for ln in bars] == ["+0.649", "-0.175", "+0.064", "+0.112"]


def test_intervention_panel_keeps_six_character_tokens_whole_at_80_columns():
    """The explore side panel is 26 columns wide at 80x24: the before / after columns showed ' Henry' as '␣Hen…'."""
    from types import SimpleNamespace as NS

    from workbench.widgets.predict import intervention_text

    names = [" Mary", " Henry", " Sarah", " Linda", " Kate"]
    top = [NS(token=t, id=i, prob=p) for i, (t, p) in enumerate(zip(names, [0.996, 0.001, 0.0, 0.0, 0.0]))]
    v = NS(layer=2, describe="L2 feature 453 ablated at 14", loss_before=1.9, loss_after=1.9, at=1,
           tokens=["<|endoftext|>", " to"], top_before=top, top_after=top[::-1], positions=[1], activation=[1.5],
           new_activation=[0.0], logit_change=[], downstream=[])
    lines = intervention_text(v, width=26).plain.splitlines()
    rows = lines[lines.index(next(x for x in lines if x.startswith("before"))) + 1:][:5]
    assert all(len(r) <= 26 for r in rows), rows
    assert [r.split()[0] for r in rows] == ["␣Mary", "␣Henry", "␣Sarah", "␣Linda", "␣Kate"], rows
    assert "99.6%" in rows[0]


# ---- 17. findings: the preview has the finding's number, undo puts it back in place, enter opens it -----------------


async def test_findings_numbering_undo_in_place_and_enter_opens(app):
    from workbench.findings import Finding

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        for i in range(3):
            app.findings.add(Finding(kind="feature", title=f"L1 feature {i + 5}", body=f"body {i}", layer=1,
                                     data={"feature": i + 5}))
        ids = [f.id for f in app.findings.findings]
        app.screen.query_one("#heatmap").focus()
        await pilot.press("7")
        await settle(pilot, lambda: app.current_mode == "findings")
        await pilot.pause(0.2)
        fs = app.screen
        await pilot.press("down")
        await pilot.pause(0.2)
        preview = fs.query_one("#finding-view").content
        assert preview.markup.lstrip().startswith("## 2. L1 feature 6")
        await pilot.press("d")
        await pilot.pause(0.2)
        assert [f.id for f in app.findings.findings] == [ids[0], ids[2]]
        await pilot.press("u")
        await pilot.pause(0.2)
        assert [f.id for f in app.findings.findings] == ids  # back in its place, not at the end
        await pilot.press("enter")
        await settle(pilot, lambda: app.current_mode == "feature")
        assert app.screen.feature == 6 and app.screen.sae_layer == 1


# ---- 18. exports: one number format per column, visible token spaces, which SAEs, and each experiment's setup ---


def test_export_numbers_have_one_format_per_column():
    import re

    from workbench.findings import md_bars, md_table

    table = md_table(["token", "DFA", "count"], [["a", 0.5, 3], ["b", -12.25, 4], ["c", 0.000123, 5]])
    cells = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    assert cells == ["+0.50", "-12.25", "+0.00"]
    small = md_table(["loss"], [[0.000123], [0.0004567]])
    assert [line.strip("| ") for line in small.splitlines()[2:]] == ["0.000123", "0.000457"]
    bars = md_bars(["a", "b"], [1.5, -0.25])
    assert re.findall(r"[+-]\d+\.\d+", bars) == ["+1.500", "-0.250"]


async def test_pinned_findings_record_token_spaces_the_sae_set_and_the_setup(app, saes):
    from support import type_prompt

    from workbench.engine.core import saes_digest

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await pilot.press("down", "down", "down", "down")
        await settle(pilot, lambda: app.screen.detail is not None and app.screen.detail.pos == 4)
        await pilot.press("p")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        await pilot.press("enter")
        await pilot.pause()
        f = app.findings.findings[-1]
        digest = app.engine.info.saes_digest
        assert f.saes == f"random · sha256 {digest}" and len(digest) == 12
        table = f.body[f.body.index("| src"):]
        assert "␣" in table  # ' Mary' is not 'Mary'
    changed = {k: v for k, v in saes.items()}
    import copy

    changed[0] = copy.deepcopy(saes[0])
    changed[0].b_enc.data[0] += 1.0
    assert saes_digest(saes) == digest and saes_digest(changed) != digest


def test_experiment_findings_record_n_seed_and_split():
    from types import SimpleNamespace

    from workbench.engine.views import experiment_view
    from workbench.screens.experiments import InductionScreen, IOIScreen

    info = SimpleNamespace(model="m", saes="default")
    ioi = IOIScreen()
    from sae.experiments.ioi_results import HeadRow, HeadsResult, IOISettings

    ioi.result = experiment_view(HeadsResult(
        experiment="heads", settings=IOISettings(model="m", n_prompts=24, seed=3, split="all", bos=True),
        clean_logit_diff=7.0, ranking="r", mean_ablation="m", heads=(HeadRow(0, 1, -1.0, None),)))
    ioi.records = [dict(r) for r in ioi.result.records]
    ioi.sort_key = "zero_delta"
    type(ioi).engine = property(lambda self: SimpleNamespace(info=info))
    try:
        f = ioi.current_finding()
    finally:
        del type(ioi).engine
    assert "N = 24 prompts · split all · seed 3" in f.body and "seed 3" in f.title
    ind = InductionScreen()
    ind.result = SimpleNamespace(prefix_lengths=[1], n_per_length=32, seq_len=64, seed=5, rule="r", heads=[],
                                 sampling="attnscope", design="d", data={})
    type(ind).engine = property(lambda self: SimpleNamespace(info=info))
    try:
        f = ind.current_finding()
    finally:
        del type(ind).engine
    assert "N = 32 sequences per prefix length of 64 tokens · seed 5" in f.body and "N=32" in f.title


# ---- 19. CLI tables keep one line per row at 80 columns; density written one way everywhere ---------------------


def test_cli_features_table_is_one_line_per_row_at_80_columns(capsys, monkeypatch, tiny_model, tiny_model_dir, tmp_path):
    import json

    from support import run_cli, sae_set_dir

    from sae.cli import common

    saes = sae_set_dir(tiny_model, tmp_path)
    args = ["features", "When Mary and John went to the store", "--layer", "1", "--top", "2",
            "--model", str(tiny_model_dir), "--saes", str(saes)]
    code, out, _ = run_cli(capsys, args + ["--json"])
    n_rows = sum(len(p["features"]) for p in json.loads(out)["positions"])
    monkeypatch.setattr(common.out, "_width", 80)
    code, out, _ = run_cli(capsys, args)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) <= set("─━╇┡┩") and line.strip())
    body = [line for line in lines[rule + 1:] if line.strip() and not line.startswith("head, source")]
    assert len(body) == n_rows, "\n".join(lines)
    assert all(" L1H" in line for line in body)


def test_density_is_one_percentage_everywhere():
    from sae.engine.names import density_text

    assert density_text(0.0123) == "1.23%" and density_text(1.2e-5) == "0.0012%" and density_text(0.5) == "50%"


@pytest.mark.parametrize("width", [28, 30, 45, 60, 70, 100])
def test_prediction_panel_header_keeps_the_token_whole_and_every_line_fits_the_panel(width):
    """At 80 columns the side panel is about 30 wide: the header cut `<|endoftext|>` to `<|endofte…` and the key hint
    wrapped. Each line of the header and hint fits `width`, and the token is whole."""
    from types import SimpleNamespace

    from workbench.widgets.predict import predictions_text

    top = [SimpleNamespace(token=" Mary", prob=0.9)]
    text = predictions_text(["<|endoftext|>", "When"], top, 0, width=width).plain
    lines = text.splitlines()
    assert "<|endoftext|>" in lines[0] and "…" not in lines[0]
    hint = next(line for line in lines[:2] if "ablate" in line)
    assert all(len(line) <= width for line in lines[:2] if "%" not in line) and "l loss" in hint
