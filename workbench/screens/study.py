"""The labelling study (key 8): N random live features per layer, each shown with its dashboard, labelled from
the keyboard (a family or role, an interpretability rating, a note), resumable and exportable as markdown.
Its keys are letters: the digits switch screens here as everywhere (global keys keep one meaning on every screen).

Labels go to the shared label file (`sae.analysis.labels`, through the engine), which several workbenches and the
`attnscope study` CLI can write at once; the automatic role stands beside the human label as a suggestion.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from workbench.widgets.footer import WorkbenchFooter
from workbench.widgets.jobbar import progress_counts
from workbench.engine import JobHandle, StudyView, plain, visible
from workbench.findings import write_export
from workbench.messages import JobCancelled, JobFailed, JobFinished, JobMessage, JobProgress
from workbench.screens.base import Failure, NavBar, StatusLine, WorkbenchScreen
from workbench.screens.feature import dashboard_renderable
from workbench.screens.modals import AskScreen, ask_export

FAMILY_KEYS = "abcdghijkl"  # key i picks family i (not e, f: export, family by name; digits switch screens)
DEFAULT_N = 30  # features per layer, as in the paper
RATING_KEYS = {"y": 2, "m": 1, "n": 0}  # after r: yes / maybe / no
RATING_NAMES = {2: "yes", 1: "maybe", 0: "no"}


class StudyScreen(WorkbenchScreen):
    MODE = "study"
    BINDINGS = [
        *[Binding(k, f"family_key('{k}')", "", show=False) for k in FAMILY_KEYS],
        Binding("r", "rate", "Rate", show=True),
        Binding("y", "rating_key('y')", "", show=False),
        Binding("m", "rating_key('m')", "", show=False),
        Binding("n", "note", "Note", show=True),
        Binding("f", "family_by_name", "Family", show=True),
        Binding("left_square_bracket", "step(-1)", "Prev", show=True),
        Binding("right_square_bracket", "step(1)", "Next", show=True),
        Binding("e", "export", "Export", show=True),
        Binding("s", "settings", "Size/seed", show=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.n, self.seed = DEFAULT_N, 0
        self.study_layers: list[Any] = []  # sae.analysis.study.StudyLayer, one per layer with built dashboards
        self.items: list[tuple[int, int]] = []  # (layer, feature) in labelling order
        self.index = 0
        self.rating_pending = False
        self.notes: list[str] = []
        self.view: Any = None
        self.job: JobHandle | None = None  # the study sample's job while it runs

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield StatusLine("drawing the study's features ...", id="study-status")
        with Horizontal(id="study-body"):
            with VerticalScroll(id="study-dashboard-scroll"):
                yield Static("", id="study-dashboard")
            with VerticalScroll(id="study-side"):
                yield Static("", id="study-panel")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return ("The paper's labelling study: N random live features per layer (seeded). Letters a-d, g-l pick a "
                "family (f by name), r then y/m/n rates it yes/maybe/no, n adds a note, [ and ] move; it resumes where you stopped. e exports the "
                "report (shares per layer, a bar figure, agreement of the automatic roles).")

    # ---- loading ----------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.run_worker(self._load(), group="study", exclusive=True)

    @property
    def study_key(self) -> str:
        ids = "+".join(f"{sl.layer}:{sl.sae[:12]}" for sl in self.study_layers)
        return f"study|{ids}|n{self.n}|s{self.seed}"

    async def _load(self) -> None:
        """From the analysis cache when it holds every layer's sample (instant), else as a job (job line; ctrl+x
        cancels); the explore screen keeps answering while it runs."""
        status = self.query_one("#study-status", StatusLine)
        info = self.engine.info or await self.ask(self.engine.open(), lambda f: status.error(f.text))
        if info is None:  # the model did not open: inline
            return
        if self.job is not None and self.job.running:
            self.job.cancel()  # other settings: the old sample is not wanted any more
        failures: list[Failure] = []
        status.say(f"drawing {self.n} features per layer and their automatic roles ...")
        view = await self.ask(self.engine.study_cached(self.n, self.seed), failures.append)
        if failures:
            status.error(failures[0].text)
            return
        if view is not None:
            self.apply(view)
            return
        job = self.attempt(self.engine.run_study, self.n, self.seed, post=self.post_message,
                           on_error=lambda f: status.error(f.text))
        if job is not None:
            self.job = job
            status.say(f"drawing {self.n} features per layer and their automatic roles: a job (job line below; "
                       "ctrl+x cancels); the sample is kept for next time")

    def apply(self, view: StudyView) -> None:
        """Show a drawn sample, resuming where the label file says this study stopped."""
        status = self.query_one("#study-status", StatusLine)
        layers, notes = list(view.layers), list(view.notes)
        self.study_layers, self.notes = layers, notes
        self.items = [(sl.layer, f) for sl in layers for f in sl.features]
        if not self.items:
            info = self.engine.info
            if info is not None and any(self.engine.building_dashboards(x) for x in info.sae_layers):
                waiting = ("the study samples the dashboards, which are being built (job line below); "
                           "it is drawn by itself when they are done")
                status.say(waiting)
                self.query_one("#study-panel", Static).update(plain(waiting))
                return
            status.error("; ".join(notes) or "no live features to label")
            self.query_one("#study-panel", Static).update(plain("\n".join(notes)))
            return
        pos = self.attempt(lambda: self.engine.label_store().position(self.study_key),
                           on_error=lambda f: notes.append(f.text))  # an unreadable label file: say so, start at 0
        self.index = min(max(pos or 0, 0), len(self.items) - 1)
        self.show()

    def _is_mine(self, m: JobMessage) -> bool:
        return m.kind == "study" and self.job is not None and m.job_id == self.job.id

    def on_job_progress(self, m: JobProgress) -> None:
        if self._is_mine(m):
            p = m.progress
            done = progress_counts(p)
            self.query_one("#study-status", StatusLine).say(f"drawing: {p.stage}{done} (ctrl+x cancels)")

    def on_job_finished(self, m: JobFinished) -> None:
        if self._is_mine(m):
            self.job = None
            self.apply(m.result)

    def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._is_mine(m):
            self.job = None
            self.query_one("#study-status", StatusLine).say("study sample cancelled; s draws it again")

    def on_job_failed(self, m: JobFailed) -> None:
        if self._is_mine(m):
            self.job = None
            self.query_one("#study-status", StatusLine).error(m.error)

    # ---- showing one feature -------------------------------------------------------------------------------

    @property
    def current(self) -> tuple[int, int] | None:
        return self.items[self.index] if self.items else None

    def layer_of(self, layer: int) -> Any:
        return next(sl for sl in self.study_layers if sl.layer == layer)

    def show(self) -> None:
        self.rating_pending = False
        self.refresh_panel()
        cur = self.current
        if cur is not None:
            self.run_worker(self._dashboard(*cur), group="study-dashboard", exclusive=True)

    async def _dashboard(self, layer: int, feature: int) -> None:
        view = await self.ask(self.engine.dashboard(layer, feature))
        if view is None:
            return
        self.view = view
        self.query_one("#study-dashboard", Static).update(dashboard_renderable(view))
        self.query_one("#study-dashboard-scroll", VerticalScroll).scroll_home(animate=False)  # each page from its top

    def families(self) -> list[str]:
        return self.engine.label_store().families()

    def current_label(self) -> tuple[int, int, Any, Any, Any] | None:
        """(layer, feature, its StudyLayer, the label store, its label or None) of the feature shown."""
        if self.current is None:
            return None
        layer, feature = self.current
        sl = self.layer_of(layer)
        store = self.engine.label_store()
        return layer, feature, sl, store, store.get(sl.sae, layer, feature)

    def refresh_panel(self, message: str = "") -> None:
        got = self.current_label()
        if got is None:
            return
        layer, feature, sl, store, lab = got
        n_done = sum(store.get(s.sae, s.layer, f) is not None for s in self.study_layers for f in s.features)
        status = self.query_one("#study-status", StatusLine)
        status.say(message or f"study: {self.index + 1} of {len(self.items)} · {n_done} labelled · seed {self.seed}, "
                   f"{self.n} per layer" + (" · " + "; ".join(self.notes) if self.notes else ""))
        panel = Text()
        panel.append(f"L{layer} feature {feature}\n", style="bold")
        panel.append(f"{self.index + 1} of {len(self.items)} · {n_done} labelled\n{sl.n_live} live in layer {layer}\n\n",
                     style="dim")
        panel.append("automatic role: ", style="dim")
        panel.append(f"{sl.auto.get(feature, '-')}\n", style="cyan")
        panel.append("yours (labels.json): ", style="dim")
        if lab is None:
            panel.append("not labelled\n", style="yellow")
        else:
            panel.append(visible(lab.family, keep=""), style="bold green")
            panel.append(f" · interpretable: {RATING_NAMES.get(lab.rating, 'unrated')}\n")
            if lab.note:
                panel.append(f"note: {visible(lab.note)}\n", style="italic")
        panel.append("\n")
        for k, fam in zip(FAMILY_KEYS, self.families()):
            panel.append(f"{k} ", style="bold dark_orange")
            panel.append(f"{visible(fam, keep='')}\n")
        panel.append("\nr then y yes · m maybe · n no", style="bold magenta" if self.rating_pending else "dim")
        self.query_one("#study-panel", Static).update(panel)

    # ---- labelling -------------------------------------------------------------------------------------------

    def _save(self, **changes: Any) -> None:
        got = self.current_label()
        if got is None:
            return
        layer, feature, sl, store, old = got
        family = changes.get("family", old.family if old else None)
        if family is None:
            self.refresh_panel()
            self.query_one("#study-status", StatusLine).error("pick a family first (its letter), then rate or note it")
            return
        saved = self.attempt(store.put, sl.sae, layer, feature, family, changes.get("rating", old.rating if old else None),
                             changes.get("note", old.note if old else ""), model=sl.model)
        if saved is None:  # a locked or corrupt label file: inline, nothing lost
            return
        said = {k: RATING_NAMES.get(v, v) if k == "rating" else v for k, v in changes.items()}
        self.refresh_panel(f"saved: L{layer} feature {feature} · " + ", ".join(f"{k} {v}" for k, v in said.items()))

    def action_family_key(self, key: str) -> None:
        if self.rating_pending:  # r then a family letter: not a rating; nothing stored
            self.rating_pending = False
            self.refresh_panel()
            self.query_one("#study-status", StatusLine).error("a rating is y (yes), m (maybe) or n (no)")
            return
        fams = self.families()
        i = FAMILY_KEYS.index(key)
        if i >= len(fams):
            self.query_one("#study-status", StatusLine).error(f"no family on key {key}")
            return
        self._save(family=fams[i])

    def action_rating_key(self, key: str) -> None:
        if not self.rating_pending:
            self.query_one("#study-status", StatusLine).error(f"{key} rates after r: r then y (yes), m (maybe) or n (no)")
            return
        self.rating_pending = False
        self._save(rating=RATING_KEYS[key])

    def action_rate(self) -> None:
        self.rating_pending = True
        self.refresh_panel("rating: press y (yes), m (maybe) or n (no)")

    def action_note(self) -> None:
        if self.rating_pending:  # r then n: rated no
            self.action_rating_key("n")
            return
        got = self.current_label()
        if got is None:
            return
        layer, feature, _, _, old = got

        def done(text: str | None) -> None:
            if text is not None:
                self._save(note=text.strip())

        self.app.push_screen(AskScreen(f"Note on L{layer} feature {feature}:", value=old.note if old else "",
                                       placeholder="what it does"), done)

    def action_family_by_name(self) -> None:
        fams = self.families()

        def check(text: str) -> str | None:
            return None if text.strip() in fams else f"not a family; one of: {', '.join(fams)}"

        def done(text: str | None) -> None:
            if text is not None:
                self._save(family=text.strip())

        self.app.push_screen(AskScreen("Family or role (by name):", check=check), done)

    # ---- moving, settings, export ------------------------------------------------------------------------------

    def action_step(self, delta: int) -> None:
        if not self.items:
            return
        self.index = min(max(self.index + delta, 0), len(self.items) - 1)
        self.attempt(lambda: self.engine.label_store().set_position(self.study_key, self.index))
        self.show()

    def action_settings(self) -> None:
        def parse(text: str) -> tuple[int, int] | None:
            parts = text.split()
            if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts) or int(parts[0]) <= 0:
                return None
            return int(parts[0]), int(parts[1])

        def done(text: str | None) -> None:
            got = parse(text) if text is not None else None
            if got is not None:
                self.n, self.seed = got
                self.reload()

        self.app.push_screen(AskScreen("Features per layer and seed:", value=f"{self.n} {self.seed}",
                                       check=lambda t: None if parse(t) else "two whole numbers: N (> 0) and a seed"),
                             done)

    def export_to(self, path: str) -> Any:
        return write_export(path, self.engine.study_markdown(self.study_layers))

    def action_export(self) -> None:
        ask_export(self.app, "Export the study report as markdown to:",
                   self.wb.default_export_path("attnscope-study.md"), self.export_to, "study report")
