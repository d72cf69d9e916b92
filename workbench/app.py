"""The workbench App: screens as modes (number keys), help, pinning, export, and the engine it talks to."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from textual.app import App
from textual.binding import Binding

from workbench.commands import WorkbenchCommands
from workbench.engine import Engine, EngineInfo, StaleRequest, one_line
from workbench.findings import ExportError, FindingsStore, export_markdown, write_export
from workbench.messages import FindingPinned, JobFailed
from workbench.screens.base import SCREENS, WorkbenchScreen
from workbench.screens.explore import ExploreScreen
from workbench.screens.feature import FeatureScreen
from workbench.screens.findings import FindingsScreen
from workbench.screens.heads import HeadsScreen
from workbench.screens.experiments import InductionScreen, IOIScreen
from workbench.screens.modals import AskScreen, HelpScreen
from workbench.screens.study import StudyScreen
from workbench.screens.training import TrainingScreen


S = TypeVar("S", bound=WorkbenchScreen)
STUDY_KEY = "8"


class WorkbenchApp(App):
    """attnscope's terminal workbench. Every action has a key; Ctrl+P finds features, layers, screens, SAEs."""

    TITLE = "attnscope"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
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
        Binding("ctrl+q", "quit", "Quit", show=True, priority=True),
        *[Binding(key, f"switch_mode('{mode}')", label, show=False) for mode, key, label in SCREENS],
        Binding(STUDY_KEY, "switch_mode('study')", "", show=False),  # not in the nav line: a side screen
    ]

    def __init__(
        self,
        engine: Engine,
        findings: FindingsStore | None = None,
        start_layer: int | None = None,
        start_prompt: str = "",
        export_default: str = "attnscope-findings.md",
    ) -> None:
        super().__init__()
        self.engine = engine
        self.findings = findings if findings is not None else FindingsStore()
        self.start_layer = start_layer
        self.start_prompt = start_prompt
        self.export_default = export_default
        self.mode_screens: dict[str, WorkbenchScreen] = {}  # filled by each screen as it mounts

    def screens_of(self, cls: type[S]) -> list[S]:
        """The mounted workbench screens of one class, in every mode (not just the current one)."""
        return [s for s in self.mode_screens.values() if isinstance(s, cls)]

    def on_mount(self) -> None:
        self.switch_mode("explore")
        if self.findings.warning:
            self.notify(self.findings.warning, title="Findings", severity="warning")

    def on_unmount(self) -> None:
        self.engine.close()

    def engine_ready(self, info: EngineInfo) -> None:
        self.sub_title = f"{info.model} · SAEs {info.saes}"

    # ---- navigation -----------------------------------------------------------------------------------

    def show_feature(self, layer: int, feature: int) -> None:
        self.switch_mode("feature")
        screen = self.screen
        if isinstance(screen, FeatureScreen):
            screen.load(layer, feature)

    def set_layer(self, layer: int) -> None:
        self.switch_mode("explore")
        if isinstance(self.screen, ExploreScreen):
            self.screen.set_layer(layer)

    # ---- global actions -------------------------------------------------------------------------------

    def action_help(self) -> None:
        rows: list[tuple[str, str]] = []
        screen = self.screen
        for source in (screen, self):
            for b in getattr(source, "BINDINGS", []):
                if isinstance(b, Binding) and b.description:
                    rows.append((b.key_display or b.key.replace("_", " "), b.description))
        for mode, key, label in SCREENS:
            rows.append((key, f"{label} screen"))
        rows.append(("ctrl+p", "command palette: features, layers, screens, SAE directories"))
        about = screen.help_about() if isinstance(screen, WorkbenchScreen) else ""
        self.push_screen(HelpScreen(getattr(screen, "MODE", "") or "workbench", rows, about))

    def action_pin(self) -> None:
        screen = self.screen
        finding = screen.current_finding() if isinstance(screen, WorkbenchScreen) else None
        if finding is None:
            self.notify("nothing to pin here yet", severity="warning")
            return

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

    def action_export(self) -> None:
        def check(path: str) -> str | None:
            try:
                written = write_export(path, export_markdown(self.findings.findings))
            except ExportError as exc:
                return str(exc)
            self.notify(f"exported {len(self.findings)} finding(s) to {written}", title="Export")
            return None

        self.push_screen(AskScreen("Export findings as markdown to:", value=self.export_default, check=check))

    def open_saes_spec(self, spec: str) -> None:
        """Swap the SAE set; a set that does not fit the model reopens the question with the error inline."""

        async def open_it() -> None:
            try:
                info = await self.engine.open_saes(spec)
            except StaleRequest:
                return
            except Exception as exc:  # noqa: BLE001 - a bad SAE dir is an inline message
                self.action_open_saes(spec, one_line(exc))
                return
            self.after_saes_changed(info)

        self.run_worker(open_it(), group="saes", exclusive=True)

    def after_saes_changed(self, info: EngineInfo) -> None:
        self.engine_ready(info)
        self.notify(f"SAEs for layers {info.sae_layers}", title="SAEs")
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

    def explore_prompt(self) -> str:
        return next((s.prompt for s in self.screens_of(ExploreScreen)), "")

    def on_job_failed(self, message: JobFailed) -> None:
        self.notify(message.error, title=f"{message.kind} failed", severity="error", timeout=8)

    def export_to(self, path: str | Path) -> Path:
        return write_export(path, export_markdown(self.findings.findings))
