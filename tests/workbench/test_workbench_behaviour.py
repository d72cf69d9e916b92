"""The workbench as a researcher expects a terminal app to behave (issue 12): never crash or lose work, say what it
is doing, and show text that fits. Pilot tests on a tiny model with random SAEs, and subprocess tests of the real
launcher (exit statuses) on the embedded default."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import random_sae

from sae.engine.jobs import Progress
from workbench.app import WorkbenchApp
from workbench.engine import Engine, TraceNodeView
from workbench.findings import Finding, FindingsStore
from workbench.widgets.heatmap import CELL, Heatmap, HeatmapData
from support import settle, slow_job, type_prompt

pytestmark = pytest.mark.usefixtures("data_dir")

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


# ---- 1. ctrl+q while a job runs -----------------------------------------------------------------------------

QUIT_SCRIPT = r"""
import asyncio, sys, time
from argparse import Namespace
from pathlib import Path
from workbench.app import WorkbenchApp
from workbench.launch import open_engine, run_and_close

out, mode = Path(sys.argv[1]), sys.argv[2]
engine = open_engine(Namespace(model="default", saes="default", device="cpu", dtype="float32"))


class Scripted(WorkbenchApp):
    def on_mount(self):
        self.set_timer(0.3, lambda: self.run_worker(self.drive()))

    async def drive(self):
        if mode == "force":  # a job that ignores cancel: only the second ctrl+q ends the app
            def stubborn(rep):
                time.sleep(60)
            self.engine.start_job("stubborn", stubborn, self.post_message)
            await asyncio.sleep(0.5)
            await self.action_quit()
            await asyncio.sleep(0.2)
            await self.action_quit()
            return
        self.switch_mode("training")
        await asyncio.sleep(0.5)
        tr = self.screen
        for wid, value in (("tr-layers", "0"), ("tr-width", "64"), ("tr-tokens", "4000000"),
                           ("tr-batch", "256"), ("tr-out", str(out))):
            tr.query_one("#" + wid).value = value
        self.set_focus(None)
        tr.action_start()
        t0 = time.monotonic()
        while not tr.history and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
        (out.parent / "progress-seen").write_text(str(len(tr.history)))
        await self.action_quit()


app = Scripted(engine, start_prompt="")
code = run_and_close(app, headless=True)
print("exit", code, file=sys.stderr)
sys.exit(code)
"""


def run_quit_script(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    script = tmp_path / "quit_script.py"  # a file, not -c: Textual finds the App subclass's source for its CSS
    script.write_text(QUIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), mode], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env())
    return proc, time.monotonic() - t0


def test_ctrl_q_during_real_training_saves_the_checkpoint_and_exits_0(tmp_path):
    proc, _ = run_quit_script(tmp_path, "train")
    assert "terminate called" not in proc.stderr
    assert (tmp_path / "progress-seen").exists(), proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()  # the run stopped through its CancelToken and saved


def test_second_ctrl_q_quits_at_once_without_aborting(tmp_path):
    proc, seconds = run_quit_script(tmp_path, "force")
    assert "terminate called" not in proc.stderr
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert seconds < 50  # did not wait for the 60 s job


# ---- 2, 3. findings: other instances, undo --------------------------------------------------------------------


async def test_pins_from_another_instance_appear_and_delete_can_be_undone(app, data_dir):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("7")
        await pilot.pause()
        table = app.screen.query_one("#findings-table")
        assert table.row_count == 0
        other = FindingsStore(data_dir)  # a second attnscope pins something
        other.add(Finding(kind="note", title="from the other window", note="hello"))
        await settle(pilot, lambda: table.row_count == 1, timeout=10)
        assert app.findings.findings[0].title == "from the other window"
        app.set_focus(table)
        await pilot.press("d")
        await pilot.pause()
        assert table.row_count == 0 and len(FindingsStore(data_dir)) == 0
        await pilot.press("u")
        await pilot.pause()
        assert table.row_count == 1
        assert [f.title for f in FindingsStore(data_dir).findings] == ["from the other window"]


# ---- 4. IOI default layer -------------------------------------------------------------------------------------


async def test_ioi_defaults_to_a_layer_whose_s2_ablation_reaches_the_logits(tiny_model):
    from workbench.screens.experiments import default_ioi_layer, no_effect_reason

    saes = {layer: random_sae(tiny_model, layer, d_sae=32, seed=layer) for layer in range(tiny_model.n_layers)}
    app = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("5")
        await pilot.pause()
        last = tiny_model.n_layers - 1
        assert app.screen.query_one("#ioi-layer").value != str(last)
        app.screen.query_one("#ioi-exp").value = "features"  # the layer counts for features and path (issue 20)
        await pilot.pause()
        assert "later layers" in str(app.screen.query_one("#ioi-note").render())
        app.screen.query_one("#ioi-layer").value = str(last)
        await pilot.pause()
        assert "there are none" in str(app.screen.query_one("#ioi-note").render())
    assert default_ioi_layer([0, 1, 2], 3)[0] == 1
    assert default_ioi_layer([2], 3)[0] == 2 and "there are none" in default_ioi_layer([2], 3)[1]
    assert no_effect_reason(1, 3) == ""


def test_ioi_bar_labels_do_not_join_fields_with_dots():
    from workbench.screens.experiments import bar_label, display_records

    rows = display_records([{"layer": 1, "head": 3, "zero_delta": -0.5, "mean_delta": -0.1}], clean=2.0)
    assert rows[0]["head"] == "L1H3" and rows[0]["% clean"] == pytest.approx(-0.25)
    assert bar_label(rows[0]) == "L1H3"
    assert bar_label({"feature": 492, "n_active": 21, "delta": 0.1}) == "F492"


# ---- 5. trace the chosen cell ---------------------------------------------------------------------------------


async def test_trace_follows_the_chosen_cell_and_its_position_can_change(app):
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        explore = app.screen
        await pilot.press("down", "down", "down", "down", "right")
        await settle(pilot, lambda: explore.detail is not None and explore.detail.pos == 4)
        feature = explore.result.columns[1]
        await pilot.press("t")
        await settle(pilot, lambda: getattr(app.screen, "trace", None) is not None)
        feat = app.screen
        assert (feat.trace.pos, feat.trace.feature) == (4, feature)
        await pilot.press("full_stop")
        await settle(pilot, lambda: feat.trace is not None and feat.trace.pos == 5)
        await pilot.press("comma", "comma")
        await settle(pilot, lambda: feat.trace is not None and feat.trace.pos == 3)
        await pilot.press("comma", "comma", "comma", "comma")  # to 0, then once past the first token: stays put
        await settle(pilot, lambda: feat.trace is not None and feat.trace.pos == 0)
        await pilot.press("comma")
        await pilot.pause()
        status = feat.query_one("#feature-status")
        assert feat.trace.pos == 0 and not status.is_error and "already at the first token" in status.message
        assert "-1" not in status.message
        await pilot.press("escape")  # closes the trace first, then goes back
        assert feat.query_one("#trace-tree").has_class("hidden")
        await pilot.press("escape")
        assert app.current_mode == "explore"


# ---- 6. training status ---------------------------------------------------------------------------------------


def test_training_status_names_no_internal_events():
    from workbench.screens.training import progress_status

    assert progress_status(Progress("train", 51, 58, stage="step 51/58", note="step")) == "step 51/58"
    assert "checkpoint saved" in progress_status(Progress("train", 1, 2, stage="step 1/2", note="checkpoint"))


async def test_training_stop_keeps_its_status_and_rate_is_this_runs(app, tmp_path):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("6")
        await pilot.pause()
        tr = app.screen
        for wid, value in (("tr-layers", "0"), ("tr-width", "32"), ("tr-tokens", "400000"), ("tr-batch", "64"),
                           ("tr-out", str(tmp_path / "run"))):
            tr.query_one(f"#{wid}").value = value
        app.set_focus(None)
        await pilot.press("r")
        await settle(pilot, lambda: tr.query_one("#spark-loss").values, timeout=60)
        await pilot.press("x")
        await settle(pilot, lambda: not tr.job.running, timeout=60)
        await pilot.pause(0.3)
        status = tr.query_one("#train-status")
        assert "stopped; checkpoint kept" in status.message and "u resumes" in status.message
        assert "· step" not in status.message
        # the screen's speed line is Progress.rate (this run's tokens only) and its ETA follows it
        tr.on_job_progress(type("M", (), {"kind": "train", "job_id": tr.job.id,
                                          "progress": Progress("train", 300_000, 400_000, unit="tokens",
                                                               stage="step 1/2", rate=1000.0, eta_s=1.0)})())
        rate = str(tr.query_one("#train-rate").render())
        assert "1,000 tokens/s in this run" in rate and "ETA 1m40s" in rate


# ---- 7. one job indicator; duplicates refused; builds named and cancellable ----------------------------------


async def test_job_indicator_waiting_jobs_duplicates_and_cancel(app):
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        started, release = threading.Event(), threading.Event()
        slow = app.engine.start_job("slow", slow_job(started, release), app.post_message, label="slow job")
        await settle(pilot, lambda: started.is_set())
        bar = app.screen.query_one("#job-bar")
        await settle(pilot, lambda: "slow job" in str(bar.render()))
        assert bar.display
        # an experiment started now waits, and its screen says so (not "running")
        await pilot.press("4")
        await pilot.pause()
        ind = app.screen
        ind.query_one("#ind-n").value = "2"
        app.set_focus(None)
        await pilot.press("r")
        await pilot.pause()
        assert "waiting behind slow job" in ind.query_one("#ind-status").message
        await pilot.press("r")
        assert ind.query_one("#ind-status").is_error  # not queued twice
        # the same dashboard build twice: refused
        h1 = app.engine.build_dashboards(1, post=app.post_message)
        with pytest.raises(Exception, match="already waiting"):
            app.engine.build_dashboards(1, post=app.post_message)
        bar = app.screen.query_one("#job-bar")
        await settle(pilot, lambda: "waiting: induction experiment, dashboards of layer 1" in str(bar.render()))
        ind.job.cancel()
        await pilot.press("ctrl+x")  # cancels the running slow job
        await settle(pilot, lambda: slow.done.is_set())
        assert slow.state in ("cancelled", "finished")
        release.set()
        # the build runs next; its progress names the layer and the unit, then ctrl+x cancels it
        await settle(pilot, lambda: h1.state == "running" and h1.last is not None and h1.last.total > 0, timeout=60)
        from workbench.widgets.jobbar import job_line

        line = job_line(h1)
        assert "layer 1" in line and "tokens" in line
        await pilot.press("ctrl+x")
        await settle(pilot, lambda: h1.done.is_set(), timeout=60)
        assert h1.state == "cancelled"
        await settle(pilot, lambda: not app.screen.query_one("#job-bar").display)


def test_background_jobs_step_aside_for_the_users_and_resume():
    from workbench.engine import Worker

    w = Worker()
    log: list[str] = []
    bg_started = threading.Event()

    def background(rep):
        log.append("bg start")
        bg_started.set()
        for i in range(400):
            time.sleep(0.005)
            rep.progress(Progress("bg", i, 400))
        log.append("bg done")
        return "bg"

    def user(rep):
        log.append("user")
        return "user"

    bg = w.start_job("bg", background, lambda m: None, label="background build", background=True)
    assert bg_started.wait(10)
    fg = w.start_job("user", user, lambda m: None)
    assert fg.done.wait(10) and fg.state == "finished"
    assert bg.done.wait(30) and bg.state == "finished"
    assert log[:3] == ["bg start", "user", "bg start"] and log[-1] == "bg done"  # paused, then started again
    w.close()


# ---- 8, 9. launch flags and terminals (the real launcher) -----------------------------------------------------


def run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "workbench.main", *args], stdin=slave, stdout=slave,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, env=env(), cwd=ROOT)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, proc.stderr


def test_bad_model_flag_is_one_line_and_exit_2_before_the_tui():
    code, err = run_in_pty(["--model", "/nonexistent"])
    lines = [x for x in err.splitlines() if x.startswith("attnscope: error:")]
    assert code == 2 and len(lines) == 1 and "model" in lines[0] and "Traceback" not in err


def test_bad_saes_flag_is_an_sae_error(tmp_path):
    code, err = run_in_pty(["--saes", str(tmp_path)])
    lines = [x for x in err.splitlines() if x.startswith("attnscope: error:")]
    assert code == 2 and len(lines) == 1 and "SAEs" in lines[0] and "could not load model" not in lines[0]


def test_no_terminal_exits_at_once():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "workbench.main"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, env=env(), cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [l for l in proc.stderr.strip().splitlines() if "needs a terminal" in l]
    assert time.monotonic() - t0 < 30


async def test_failed_job_bar_stops_spinning(app):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("5")
        await pilot.pause()
        ioi = app.screen

        def boom(rep):
            raise ValueError("no luck")

        from textual.widgets import ProgressBar

        ioi.query_one(ProgressBar).update(total=None, progress=0)
        ioi.job = app.engine.start_job("ioi", boom, ioi.post_message)
        await settle(pilot, lambda: ioi.job.done.is_set())
        await pilot.pause(0.2)
        assert ioi.query_one(ProgressBar).total is not None
        assert ioi.query_one("#ioi-status").is_error


# ---- 10-13. text that fits ------------------------------------------------------------------------------------


def test_cli_tables_never_ellipsize_numbers():
    from io import StringIO

    from rich.console import Console

    from sae.cli.common import FitTable

    t = FitTable(title="induction")
    for c in ["head", "kind", *[f"s{i}" for i in range(9)], "dla1", "dla9"]:
        t.add_column(c)
    for h in range(6):
        t.add_row(f"2.{h}", "short-prefix", *[f"{0.1 * i:.2f}" for i in range(9)], "-0.03", "3.73")
    buf = StringIO()
    Console(file=buf, width=80).print(t)
    text = buf.getvalue()
    assert "…" not in text and "-0.03" in text and "short-prefix" in text.replace("\n", "")
    assert max(len(x) for x in text.splitlines()) <= 80


async def test_heatmap_sideways_scroll_shows_whole_columns_only():
    from textual.app import App

    class One(App):
        def compose(self):
            yield Heatmap(HeatmapData(["a", "b"], list(range(1000, 1030)), np.ones((2, 30))), id="hm")

    async with One().run_test(size=(70, 10)) as pilot:
        hm = pilot.app.query_one(Heatmap)
        hm.focus()
        for x in (CELL * 3 + 2, CELL * 5 - 1):  # scrolled to the middle of a column (mouse, scrollbar)
            hm.scroll_to(x, 0, animate=False, immediate=True)
            await pilot.pause()
            header = "".join(seg.text for seg in hm.render_line(0)).split("│", 1)[1]
            ids = header.split()
            assert ids and all(int(i) in range(1000, 1030) for i in ids), header
            assert int(ids[0]) == 1000 + -(-x // CELL)  # the half-shown column is not drawn
        await pilot.press(*["right"] * 20)
        header = "".join(seg.text for seg in hm.render_line(0)).split("│", 1)[1]
        assert "1020" in header.split()  # the cursor's column is whole on screen


def test_multibyte_tokens_never_show_replacement_characters(tiny_model):
    tokens, _ = tiny_model.to_tokens("café → ok")
    strs = tiny_model.token_strs(tokens[0])
    assert not any("\ufffd" in s for s in strs)
    assert any("<0x" in s for s in strs) or "é" in "".join(strs)


async def test_help_has_no_duplicate_rows_or_key_names(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("question_mark")
        await pilot.pause()
        rows = app.screen.rows
        keys = [k for k, _ in rows]
        assert len(keys) == len(set(keys))
        assert "[" in keys and not any("square" in k for k in keys)


async def test_terms_on_screen_are_defined(app):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        assert "peak" in str(app.screen.query_one("#heatmap-legend").render())
        await pilot.press("3")
        await pilot.pause()
        assert "mono" in str(app.screen.query_one("#heads-legend").render())
    from workbench.screens.experiments import IOI_TERMS

    assert "max_abs_change" in IOI_TERMS["splice"] and "clean" in IOI_TERMS["heads"]
    assert all(k in IOI_TERMS["noising"] for k in ("names", "abs_pos", "rel_pos", "alongside"))


# ---- 14. focus and escape ---------------------------------------------------------------------------------------


async def test_app_starts_on_the_heatmap_and_escape_goes_back(app):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.pause()
        assert isinstance(app.focused, Heatmap)
        await pilot.press("slash")
        assert app.focused.id == "prompt"
        await pilot.press("escape")
        assert isinstance(app.focused, Heatmap)
        for key in ("3", "4", "5", "6", "7"):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode != "explore"
            await pilot.press("escape")
            await pilot.pause()
            assert app.current_mode == "explore", key


# ---- 15. command palette actions ------------------------------------------------------------------------------


async def test_command_palette_offers_actions(app):
    from workbench.commands import WorkbenchCommands

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        names = [name for name, _, _ in WorkbenchCommands(app.screen).commands("")]
        for want in ("Build dashboards of every SAE layer", "Trace the selected heatmap cell",
                     "Run the IOI experiment", "Run the induction experiment", "Train SAEs",
                     "Cancel the running job", "Export findings as markdown"):
            assert any(n.startswith(want) for n in names), want
        build = next(cb for n, cb, _ in WorkbenchCommands(app.screen).commands("") if n.startswith("Build dashboards of layer 1"))
        build()
        await pilot.pause()
        assert any(h.label == "dashboards of layer 1" for h in app.engine.worker.jobs())
        app.engine.worker.cancel_all()


# ---- 16, 17. exports --------------------------------------------------------------------------------------------


def test_exported_trace_has_the_prompt_and_only_the_top_of_the_tree():
    from workbench.engine import TraceView
    from workbench.screens.feature import trace_finding

    leaves = tuple(TraceNodeView(kind="head_source", label=f"leaf {i}", value=0.0001, children=()) for i in range(800))
    big = TraceNodeView(kind="head", label="head L1H3", value=2.0, children=leaves[:400])
    root = TraceNodeView(kind="feature", label="L1 F7", value=2.2,
                         children=(big, TraceNodeView(kind="head", label="head L1H0", value=0.12, children=leaves[400:])))
    tr = TraceView(layer=1, feature=7, pos=3, tokens=["a", " b", " c", " d"], root=root, approximation="exact",
                   truncated=False)
    f = trace_finding(tr, None, prompt="a b c d")
    assert "a b c d" in f.body
    assert len(f.body.splitlines()) < 30
    assert "smaller terms" in f.body


async def test_export_writes_svg_figures_beside_the_markdown_with_the_umask(app, tmp_path):
    old = os.umask(0o022)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, lambda: app.engine.info is not None)
            await type_prompt(pilot, app)
            await settle(pilot, lambda: app.screen.detail is not None)
            finding = app.screen.current_finding()
            app.findings.add(finding)
            path = app.export_to(tmp_path / "notes.md")
    finally:
        os.umask(old)
    text = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644  # the report too follows the umask (not 0600)
    figs = sorted((tmp_path / "notes-figures").glob("*.svg"))
    assert {p.name.split("-")[-1] for p in figs} >= {"heatmap.svg", "heads.svg", "sources.svg"}
    for p in figs:
        assert f"](notes-figures/{p.name})" in text
        assert p.read_text().lstrip().startswith("<svg")
        assert p.stat().st_mode & 0o777 == 0o644


# ---- 19. first launch builds the dashboards in the background --------------------------------------------------


async def test_first_launch_builds_dashboards_in_the_background_and_stays_responsive(tiny_model, saes):
    app = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), auto_build=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await settle(pilot, lambda: any(h.kind == "dashboards" for h in app.engine.worker.jobs()), timeout=30)
        job = next(h for h in app.engine.worker.jobs() if h.kind == "dashboards")
        assert job.background and job.label == "dashboards of layers 0,1"
        await settle(pilot, lambda: "dashboards of layers 0,1" in str(app.screen.query_one("#job-bar").render()))
        await type_prompt(pilot, app)  # quick requests are served between the build's batches
        await pilot.press("ctrl+x")
        await settle(pilot, lambda: job.done.is_set(), timeout=60)
        assert job.state in ("cancelled", "finished")


# ---- a terminal that goes away (a dropped SSH session, a killed tmux window) ----------------------------------


async def test_lost_terminal_cancels_jobs_keeps_the_prompt_and_ends_with_129(app, data_dir):
    """The watch sees the terminal gone: the running job is cancelled and waited for before the process ends,
    the prompt is kept for the next launch, the exit status is 129 (128 + SIGHUP)."""
    from workbench.session import Session
    from workbench.terminal_watch import TerminalWatch

    ended: list[int] = []
    alive = threading.Event()
    alive.set()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app, "Lost terminal prompt")
        started = threading.Event()
        stopped_at: list[float] = []

        def job(rep):
            started.set()
            while not rep.cancelled:
                time.sleep(0.01)
            time.sleep(0.3)  # saving a checkpoint takes a while: the process must wait for it
            stopped_at.append(time.monotonic())
            return "saved"

        app.engine.start_job("slow", job, app.post_message)
        assert started.wait(10)
        watch = TerminalWatch(app, alive=alive.is_set, interval_s=0.05, end=lambda code: ended.append(code))
        watch.start()
        time.sleep(0.3)
        assert not ended  # the terminal is there: nothing happens
        alive.clear()
        watch.join(20)
        assert ended == [129]
        assert stopped_at and app.hung_up
    assert Session(data_dir).last_prompt() == "Lost terminal prompt"


def test_sighup_counts_as_a_lost_terminal(app):
    import signal

    from workbench.terminal_watch import TerminalWatch

    ended: list[int] = []
    app.hung_up = False
    watch = TerminalWatch(app, alive=lambda: True, interval_s=0.05, end=lambda code: ended.append(code))
    old = signal.getsignal(signal.SIGHUP)
    try:
        watch.install_signal()
        watch.start()
        os.kill(os.getpid(), signal.SIGHUP)
        watch.join(20)
    finally:
        signal.signal(signal.SIGHUP, old)
    assert ended == [129]


def test_workbench_whose_pty_goes_away_exits_instead_of_running_on(tmp_path):
    """The real launcher on a pseudo-terminal that is then closed (what a dropped SSH session does): the process
    ends by itself within seconds with status 129 and keeps the prompt (it kept running at ~90% CPU, its output
    thread blocked on the dead terminal). The pty is not its controlling terminal, so no SIGHUP comes: the watch
    must notice by itself, as under `make run` in tmux."""
    import fcntl
    import re
    import select
    import struct
    import termios

    from workbench.session import Session

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    e = env()
    e["ATTNSCOPE_DATA_DIR"] = str(tmp_path / "data")
    e["ATTNSCOPE_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-m", "workbench.main", "--prompt", "A pty prompt"], stdin=slave,
                            stdout=slave, stderr=slave, env=e, cwd=ROOT)  # Textual draws on stderr
    os.close(slave)
    seen = b""
    try:
        t0 = time.monotonic()
        while b"Explore" not in re.sub(rb"\x1b\[[0-9;?<>]*[a-zA-Z]", b"", seen) and time.monotonic() - t0 < 120:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert b"Explore" in seen, seen[-500:]
    finally:
        os.close(master)  # the terminal goes away
    t1 = time.monotonic()
    code = proc.wait(timeout=60)
    assert code == 129
    assert time.monotonic() - t1 < 30
    assert Session(tmp_path / "data").last_prompt() == "A pty prompt"


async def test_first_heatmap_starts_on_the_first_features_peak_and_later_prompts_keep_the_cursor():
    """The first heatmap of a session (the default, its example prompt, as a new user sees it) opens on the first
    feature's strongest token, so the side panel shows what it picks out, not on BOS, where it is nearly silent; a
    later prompt leaves the cursor where the user put it."""
    from workbench.launch import EXAMPLE_PROMPT

    app = WorkbenchApp(Engine("default", "default", device="cpu"), start_prompt=EXAMPLE_PROMPT)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None, timeout=60)
        explore = app.screen
        await settle(pilot, lambda: explore.result is not None, timeout=60)
        heat = explore.query_one(Heatmap)
        column = np.asarray(explore.result.values)[:, 0]
        peak = max(range(len(column)), key=lambda i: (column[i], -i))  # the largest, earliest on a tie
        assert column[0] < column[peak] and peak > 0
        assert (heat.cursor_row, heat.cursor_col) == (peak, 0)
        await settle(pilot, lambda: explore.detail is not None and explore.detail.pos == peak)
        heat.move_to(1, 1)
        await type_prompt(pilot, app, "When Tom and Anna went to the park, Anna gave a ball to")
        assert (heat.cursor_row, heat.cursor_col) == (1, 1)
