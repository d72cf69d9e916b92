"""The workbench App: screens as modes (number keys), help, pinning, export, and the engine it talks to."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, TypeVar

from textual.app import App
from textual.binding import Binding
from textual.widgets import Input

from workbench.engine import visible
from workbench.commands import WorkbenchCommands
from workbench.search_commands import FeatureSearch
from workbench.engine import Engine, EngineInfo, one_line
from workbench.figures import export_report
from workbench.findings import ExportError, FindingsStore
from workbench.messages import FindingPinned, JobCancelled, JobFailed, JobFinished
from workbench.screens.base import SCREENS, WorkbenchScreen, reported
from workbench.screens.explore import ExploreScreen
from workbench.screens.feature import FeatureScreen
from workbench.screens.findings import FindingsScreen
from workbench.screens.heads import HeadsScreen
from workbench.screens.experiments import InductionScreen, IOIScreen
from workbench.screens.modals import AskScreen, HelpScreen, ask_export
from workbench.screens.study import StudyScreen
from workbench.screens.training import TrainingScreen
from workbench.widgets.edit import UndoInput


S = TypeVar("S", bound=WorkbenchScreen)

AUTO_BUILD_DELAY_S = 3.0
KEY_NAMES = {"left_square_bracket": "[", "right_square_bracket": "]", "question_mark": "?", "slash": "/",
             "comma": ",", "full_stop": ".", "escape": "esc", "enter": "enter"}
HELP_WORDS = {"cancel_job": "cancel the running job (shown in the job line above the footer)",
              "back": "leave a text field, close a panel, or go home to explore (it says so)",
              "quit": "quit (running jobs stop cleanly first; press twice to quit at once)",
              "copy": "copy what this screen shows as text (terminal clipboard, OSC 52: works over SSH)",
              "export_html": "export the findings as one self-contained HTML page (no network, no script)",
              "ablate": "ablate the selected feature at the selected token; the prediction there before / after",
              "intervene_form": "set (2.5) or scale (x3) the selected feature at its token; add 'all' for every firing",
              "toggle_loss": "show / hide the prompt's loss per token",
              "pattern": "attention pattern (query x key) of a head: the cell's strongest DFA head, or the selected one",
              "compare": "compare this prompt with a second one: the same features side by side, and B - A",
              "history(-1)": "in the prompt: the previous prompt run (kept across launches)",
              "history(1)": "in the prompt: the next prompt run",
              "go_to": "go back to where the selected finding was made (prompt, layer, cell, screen)"}


def key_label(key: str) -> str:
    """A binding's key as the user types it: '[' not 'left_square_bracket'; 'escape,q' -> 'esc q'."""
    return " ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in key.split(","))


class WorkbenchApp(App):
    """attnscope's terminal workbench. Every action has a key; Ctrl+P finds features, layers, screens, SAEs."""

    TITLE = "attnscope"

    def notify(self, message: str, *, title: str = "", severity: str = "information",  # type: ignore[override]
               timeout: float | None = None, markup: bool = False) -> None:
        """Textual's toast, but its text is never markup (a note, a title or a path may hold `[/]`) and its
        control characters are shown, not sent to the terminal. Every screen's `notify` comes here."""
        super().notify(visible(message), title=visible(title, keep=""), severity=severity,  # type: ignore[arg-type]
                       timeout=timeout, markup=markup)
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses elsewhere find it too
    COMMANDS = App.COMMANDS | {WorkbenchCommands, FeatureSearch}
    MODES = {
        "explore": ExploreScreen,
        "feature": FeatureScreen,
        "heads": HeadsScreen,
        "induction": InductionScreen,
        "ioi": IOIScreen,
        "training": TrainingScreen,
        "findings": FindingsScreen,
        "study": StudyScreen,
    }
    BINDINGS = [
        Binding("question_mark", "help", "Help", show=True),
        Binding("p", "pin", "Pin", show=True),
        Binding("e", "export", "Export", show=True),
        Binding("E", "export_html", "Export HTML", show=False),
        Binding("y", "copy", "Copy", show=False),
        Binding("ctrl+q", "quit", "Quit", show=True, priority=True),
        Binding("ctrl+x", "cancel_job", "Cancel job", show=False),
        Binding("escape", "back", "Back", show=False),
        *[Binding(key, f"switch_mode('{mode}')", label, show=False) for mode, key, label in SCREENS],
    ]

    def __init__(
        self,
        engine: Engine,
        findings: FindingsStore | None = None,
        start_layer: int | None = None,
        start_prompt: str = "",
        export_default: str = "",
        auto_build: bool = False,
        session: Any = None,
    ) -> None:
        super().__init__()
        self.auto_build = auto_build  # build missing dashboards in the background once the engine is open
        self._auto_built = False
        self._quit_at: float | None = None  # when the first ctrl+q asked the jobs to stop
        self.mode_history: list[str] = []
        self.engine = engine
        self.findings = findings if findings is not None else FindingsStore()
        self.start_layer = start_layer
        self.start_prompt = start_prompt
        self.export_default = export_default  # "": attnscope-findings.md in the data dir (never the working dir)
        self.mode_screens: dict[str, WorkbenchScreen] = {}  # filled by each screen as it mounts
        self.copied = ""  # the last text copied with y (OSC 52 cannot be read back)
        from workbench.session import Session

        # prompt history, training form, last experiment results, kept across launches (the data dir)
        self.session = session if session is not None else Session()

    def screens_of(self, cls: type[S]) -> list[S]:
        """The mounted workbench screens of one class, in every mode (not just the current one)."""
        return [s for s in self.mode_screens.values() if isinstance(s, cls)]

    def on_mount(self) -> None:
        self.switch_mode("explore")
        if self.findings.warning:
            self.notify(self.findings.warning, title="Findings", severity="warning")

    def on_unmount(self) -> None:
        self.keep_last_prompt()
        self.engine.close()

    def keep_last_prompt(self) -> None:
        """Keep the explore prompt for the next launch (it starts with it); once per run."""
        if getattr(self, "_prompt_kept", False):
            return
        self._prompt_kept = True
        prompt = self.explore_prompt()
        if prompt.strip() and getattr(self, "remember", True):
            self.session.add_prompt(prompt)

    def engine_ready(self, info: EngineInfo) -> None:
        self.sub_title = f"{info.model} · SAEs {info.saes}"
        if self.auto_build and not self._auto_built:
            # after the first heatmap (explore calls `start_auto_build`), or after a few idle seconds: the first
            # prompt must not wait behind the build's set-up
            self.set_timer(AUTO_BUILD_DELAY_S, lambda: self.start_auto_build(0.0))

    def start_auto_build(self, delay_s: float = AUTO_BUILD_DELAY_S) -> None:
        """Start the first-launch build `delay_s` from now (once): the first cells the user walks stay instant."""
        if self.auto_build and not self._auto_built:
            self._auto_built = True
            self.set_timer(max(delay_s, 0.01),
                           lambda: self.run_worker(self._build_missing_dashboards(), group="auto-build"))

    async def _build_missing_dashboards(self) -> None:
        """First launch: build the dashboards the open SAEs lack, behind the user's own jobs; cancellable from
        the job indicator (ctrl+x) and resumed on the next launch."""
        missing = None  # a failed look-up only skips the convenience
        with reported(lambda f: self.notify(f"could not check the dashboards: {f.text}", severity="warning"),
                      "first-launch build", self.log):
            missing = await self.engine.missing_dashboards()
        if not missing:
            return
        job = None  # e.g. the user already started the same build: skipped (a bug is still shown)
        with reported(lambda f: self.notify(f.text, severity="error") if f.bug else self.log(f"auto-build skipped: {f.text}"),
                      "first-launch build", self.log):
            job = self.engine.build_dashboards(missing, post=self.post_message, background=True)
        if job is None:
            return
        for s in self.screens_of(ExploreScreen):  # its summary now says "being built", not "not built"
            s.refresh_summary()
        self.notify(f"building the dashboards of layers {', '.join(map(str, missing))} in the background "
                    "(ctrl+x cancels; it resumes next launch)", title="Dashboards", timeout=6)

    def on_job_finished(self, message: JobFinished) -> None:
        """A job the app started (the first-launch dashboard build): show its results where they are read."""
        if message.kind == "dashboards":
            self.notify("dashboards built", title="Dashboards")
            self.dashboards_changed()

    def on_job_cancelled(self, message: JobCancelled) -> None:
        if message.kind == "dashboards":
            self.notify("dashboard build stopped; the scan so far is kept and resumes next time", title="Dashboards")

    def dashboards_changed(self) -> None:
        from workbench.screens.explore import ExploreScreen as _Explore

        for s in self.screens_of(FeatureScreen):
            if s.sae_layer is not None and s.feature is not None:
                s.load(s.sae_layer, s.feature, pos=s.trace_pos)
        for s in self.screens_of(_Explore):
            s.refresh_summary()
        for s in self.screens_of(HeadsScreen):
            s.action_run()
        for s in self.screens_of(StudyScreen):
            if not s.items:  # drawn while the dashboards were missing: draw it now
                s.reload()

    # ---- actions the command palette offers ----------------------------------------------------------

    def run_action_build(self, layers: list[int]) -> None:
        """Build dashboards (from the palette); refused when the same build already runs or waits."""
        h = None  # a duplicate or a missing SAE is a notification
        with reported(lambda f: self.notify(f.text, title="Dashboards", severity="error" if f.bug else "warning"),
                      "palette build", self.log):
            h = self.engine.build_dashboards(layers, post=self.post_message)
        if h is None:
            return
        self.notify(f"{h.label}: {'building' if h.state == 'running' else 'queued'} (ctrl+x cancels)", title="Dashboards")

    def action_trace_cell(self) -> None:
        explore = next(iter(self.screens_of(ExploreScreen)), None)
        if explore is None or explore.selected_cell() is None:
            self.notify("no heatmap cell chosen yet: type a prompt on screen 1", severity="warning")
            return
        explore.action_trace()

    def run_screen_action(self, mode: str, action: str) -> None:
        """Go to a screen and press its key (run an experiment, start training)."""
        self.switch_mode(mode)

        def press() -> None:
            screen = self.screen
            getattr(screen, f"action_{action}")()

        self.call_after_refresh(press)

    # ---- jobs and quitting ----------------------------------------------------------------------------

    def action_cancel_job(self) -> None:
        """Cancel the running job (or, with none running, the first waiting one)."""
        jobs = self.engine.worker.jobs()
        live = [h for h in jobs if not h.cancelled]
        if not live:
            self.notify("no job is running")
            return
        live[0].cancel()
        self.notify(f"stopping {live[0].label} after its current batch", title="Jobs")

    async def action_quit(self) -> None:
        """Quit. Running jobs are cancelled and waited for (a training run saves its checkpoint, a dashboard
        build its scan); a second ctrl+q within 5 s quits without waiting (exit status 130)."""
        now = time.monotonic()
        if self._quit_at is not None and now - self._quit_at < 5.0:
            self.exit(return_code=130)
            return
        handles = self.engine.worker.cancel_all()
        if not handles:
            self.exit()
            return
        self._quit_at = now
        names = ", ".join(h.label for h in handles)
        self.notify(f"stopping {names} before quitting (a training run saves its checkpoint) · ctrl+q again quits at once",
                    title="Quitting", timeout=10)

        async def wait_then_exit() -> None:
            # polled, not waited on in a thread: an executor thread would hold the process after a forced quit
            while not all(h.done.is_set() for h in handles):
                await asyncio.sleep(0.05)
            self.exit()

        self.run_worker(wait_then_exit(), group="quit", exclusive=True)

    # ---- going back -----------------------------------------------------------------------------------

    def _watch_mode_history(self, mode: str) -> None:
        if not self.mode_history or self.mode_history[-1] != mode:
            self.mode_history.append(mode)
            del self.mode_history[:-20]

    def switch_mode(self, mode: str):  # type: ignore[override]
        self._watch_mode_history(mode)
        return super().switch_mode(mode)

    def action_back(self) -> None:
        """Escape: leave a text field first; then close a screen's open panel (`back()`); then go home to explore,
        saying so (never to whatever screen came before, where single letters act). On explore's main view it only
        says where the keys are."""
        if isinstance(self.focused, Input):
            screen = self.screen
            main = screen.main_widget() if isinstance(screen, WorkbenchScreen) else None
            self.set_focus(main)
            return
        screen = self.screen
        if isinstance(screen, WorkbenchScreen) and screen.back():
            return
        if self.current_mode == "explore":
            self.notify("explore is the home screen; 1-8 switch screens, ? lists the keys", timeout=3)
            return
        self.switch_mode("explore")
        self.notify("back to explore (escape goes home)", timeout=3)

    # ---- navigation -----------------------------------------------------------------------------------

    def show_feature(self, layer: int, feature: int, pos: int | None = None, trace: bool = False) -> None:
        """Open a feature's dashboard; `pos` is the explore prompt's token it was chosen at (what `t` traces),
        and `trace` starts the trace at once."""
        self.switch_mode("feature")
        screen = self.screen
        if isinstance(screen, FeatureScreen):
            screen.load(layer, feature, pos=pos)
            if trace:
                screen.action_trace()

    def show_head(self, layer: int, head: int) -> None:
        """The heads screen with head layer.head selected (its top features; v its attention pattern)."""
        self.switch_mode("heads")
        if isinstance(self.screen, HeadsScreen):
            self.screen.select_head(layer, head)

    def set_layer(self, layer: int) -> None:
        self.switch_mode("explore")
        if isinstance(self.screen, ExploreScreen):
            self.screen.set_layer(layer)

    # ---- global actions -------------------------------------------------------------------------------

    def action_help(self) -> None:
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        screen = self.screen
        for source in (screen, self):
            for b in getattr(source, "BINDINGS", []):
                if not isinstance(b, Binding) or not b.description or b.action.startswith("switch_mode"):
                    continue
                key = key_label(b.key_display or b.key)
                if key not in seen:  # a screen's own binding hides the app's for the same key
                    seen.add(key)
                    rows.append((key, HELP_WORDS.get(b.action, b.description)))
        if isinstance(screen, WorkbenchScreen) and screen.query(UndoInput):
            rows.append(("ctrl+z ctrl+y", "in a text field: undo / redo an edit (the field's own keys)"))
        for mode, key, label in SCREENS:
            rows.append((key, f"{label} screen"))
        rows.append(("ctrl+p", "command palette: actions, features, layers, screens, SAE directories; search "
                               "'token: the', 'text: ...', 'label: ...', 'role: ...', 'here'"))
        about = screen.help_about() if isinstance(screen, WorkbenchScreen) else ""
        self.push_screen(HelpScreen(getattr(screen, "MODE", "") or "workbench", rows, about))

    def action_pin(self) -> None:
        screen = self.screen
        finding = screen.current_finding() if isinstance(screen, WorkbenchScreen) else None
        if finding is None:
            self.notify("nothing to pin here yet", severity="warning")
            return

        info = self.engine.info
        if info is not None and finding.saes == info.saes:
            finding.saes = info.saes_record  # name, path and weights digest: which SAEs, not just "default"

        def done(note: str | None) -> None:
            if note is None:
                return
            finding.note = note
            try:
                self.findings.add(finding)
            except OSError as exc:
                self.notify(f"could not save the finding: {one_line(exc)}", severity="error")
                return
            self.notify(f"pinned: {finding.title}", title="Findings")
            for s in self._findings_screens():
                s.post_message(FindingPinned(finding.id))

        self.push_screen(AskScreen(f"Pin “{finding.title}” with a note:", placeholder="what you noticed"), done)

    def _findings_screens(self) -> list[FindingsScreen]:
        return self.screens_of(FindingsScreen)

    def default_export_path(self, name: str) -> str:
        """`name` in the data dir (created if missing): exports never land in the working directory by default."""
        folder = self.findings.directory
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the export's own check then says why it cannot write there
        return str(folder / name)

    def action_export(self) -> None:
        def write(path: str) -> Path:
            self.findings.reload_if_changed()
            if self.findings.error:  # a damaged findings file never becomes a report of "0 findings" over the old one
                raise ExportError(f"{self.findings.error}; nothing exported")
            return export_report(path, self.findings.findings)

        ask_export(self, "Export findings as markdown to:",
                   self.export_default or self.default_export_path("attnscope-findings.md"), write,
                   f"{len(self.findings)} finding(s)")

    def action_export_html(self) -> None:
        """The pinned findings as one self-contained HTML page (workbench.html_export); an existing page is
        replaced only after a yes, as the markdown export."""
        from workbench.html_export import write_html

        def write(path: str) -> Path:
            self.findings.reload_if_changed()
            if self.findings.error:
                raise ExportError(f"{self.findings.error}; nothing exported")
            return write_html(path, self.findings.findings)

        default = str(Path(self.export_default or self.default_export_path("attnscope-findings.md")).with_suffix(".html"))
        ask_export(self, "Export findings as one HTML page to:", default, write, f"{len(self.findings)} finding(s)",
                   screen_id="export-html")

    def open_saes_spec(self, spec: str) -> None:
        """Swap the SAE set; a set that does not fit the model reopens the question with the error inline."""

        async def open_it() -> None:
            info = None  # a bad SAE dir is an inline message in the reopened question
            with reported(lambda f: self.action_open_saes(spec, f.text), "open SAEs", self.log):
                info = await self.engine.open_saes(spec)
            if info is not None:
                self.after_saes_changed(info)

        self.run_worker(open_it(), group="saes", exclusive=True)

    def after_saes_changed(self, info: EngineInfo) -> None:
        self.engine_ready(info)
        self.notify(f"showing SAEs {info.saes} (layers {', '.join(map(str, info.sae_layers))})", title="SAEs")
        for s in self.screens_of(ExploreScreen):
            s.set_layer(s.sae_layer if s.sae_layer in info.d_sae else info.sae_layers[0])

    def action_open_saes(self, value: str = "", error: str = "") -> None:
        def done(spec: str | None) -> None:
            if spec and spec.strip():
                self.open_saes_spec(spec.strip())

        ask = AskScreen("Open SAEs (a directory, a directory of SAE directories, or 'default'):", value=value)
        self.push_screen(ask, done)
        if error:
            self.call_after_refresh(ask.show_error, error)

    def remember_prompt(self, prompt: str) -> None:
        """Add a prompt to the history kept across launches (up / down in the prompt field walk it)."""
        self.session.add_prompt(prompt)

    def prompt_history(self) -> list[str]:
        return self.session.prompts()

    def action_copy(self) -> None:
        """Copy what this screen shows (its pinnable finding: a cell's numbers, a table, a trace) as markdown text
        through the terminal's clipboard (OSC 52, so it works over SSH)."""
        screen = self.screen
        finding = screen.current_finding() if isinstance(screen, WorkbenchScreen) else None
        if finding is None:
            self.notify("nothing to copy here yet", severity="warning")
            return
        text = f"{finding.title}\n\n{finding.body}".strip() + "\n"
        self.copy_to_clipboard(text)
        self.copied = text
        self.notify(f"copied {len(text.splitlines())} line(s) to the clipboard (OSC 52)", title="Copy")

    def go_to_finding(self, finding) -> None:
        """Back to where a finding was made: its prompt, layer and cell on the explore screen, its feature's
        dashboard (and trace), or its screen."""
        from workbench.navigation import go_to_finding

        go_to_finding(self, finding)

    def explore_prompt(self) -> str:
        return next((s.prompt for s in self.screens_of(ExploreScreen)), "")

    def on_job_failed(self, message: JobFailed) -> None:
        if message.bug:  # its traceback is in the bug log already; Textual's log gets it too
            self.log.error(message.traceback)
        self.notify(message.error, title=f"{message.kind} failed", severity="error", timeout=8)

    def export_to(self, path: str | Path) -> Path:
        return export_report(path, self.findings.findings)
