"""The head survey: a layer x head grid shaded by polysemanticity; enter lists a head's top features and roles."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from workbench.widgets.footer import WorkbenchFooter
from workbench.widgets.jobbar import progress_counts
from workbench.engine import HeadFeatureView, HeadsView, HeadView, JobHandle, head_name
from workbench.findings import Finding, md_table
from workbench.messages import JobCancelled, JobFailed, JobFinished, JobMessage, JobProgress
from workbench.screens.base import Failure, NavBar, StatusLine, WorkbenchScreen


def _role(f: HeadFeatureView) -> str:
    return f.role + ("*" if f.source == "human" else "")


def verdict_cell(h: HeadView) -> Text:
    poly = h.verdict == "polysemantic"
    n_fam = len({f.role for f in h.features if f.role})
    label = f"{'poly' if poly else 'mono'} {n_fam}f" if n_fam else ("poly" if poly else "mono")
    cell = Text(label, style="bold white on dark_red" if poly else "bold black on green3")
    cell.append(" ")  # unshaded: cells apart, and the grid narrow enough for the side panel's roles at 80 columns
    return cell


ROLE_COLUMN = "automatic role (* human label, labels.json)"  # in exports
ROLE_HEADER = "role (* human)"  # on screen: a long header would widen the column past the panel (the legend says more)
HEADS_LEGEND = ("mono / poly: the head's top-10 features (by their share of its decoder norm) have one role / "
                "several; Nf: N different roles among them (the side panel lists them). A role is the automatic role; * marks "
                "a human label (labels.json) instead. Heads are named L1H3 (layer 1, head 3), as in the CLI.")


SAMPLE_PROMPT = "When Mary and John went to the store, John gave a drink to Mary"


def _explore() -> type:
    from workbench.screens.explore import ExploreScreen

    return ExploreScreen


class HeadsScreen(WorkbenchScreen):
    MODE = "heads"
    BINDINGS = [
        Binding("enter", "open_head", "Head", show=True),
        Binding("r", "run", "Survey", show=True),
        Binding("f", "open_feature", "Feature", show=True),
        Binding("v", "pattern", "Pattern", show=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.survey: HeadsView | None = None
        self.head: HeadView | None = None
        self.job: JobHandle | None = None

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield StatusLine("r runs the head survey over the SAEs' layers", id="heads-status")
        with Horizontal(id="heads-body"):
            yield DataTable(id="heads-grid", cursor_type="cell", cell_padding=0)  # 4 heads fit at 80 columns
            with VerticalScroll(id="heads-side"):
                yield Static("", id="head-detail")
                yield DataTable(id="head-features", cursor_type="row", zebra_stripes=False)
                yield Static("", id="head-rule")
        yield Static(HEADS_LEGEND, id="heads-legend", classes="dim-note")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return ("Each head's top features by decoder-norm share and their roles: the human label (*) where one exists "
                "(study screen, key 8), else the automatic role; polysemantic = top features of several kinds.")

    def on_mount(self) -> None:
        if self.engine.info is not None:
            self.action_run()

    def action_run(self) -> None:
        self.run_worker(self._run(), group="heads", exclusive=True)

    async def _run(self) -> None:
        """From the analysis cache when it holds the survey (instant), else as a job (job line; ctrl+x cancels)."""
        status = self.query_one(StatusLine)
        if self.job is not None and self.job.running:
            status.say("the head survey is running (job line below; ctrl+x cancels)")
            return
        status.say("surveying heads ...")
        failures: list[Failure] = []

        def failed(f: Failure) -> None:
            failures.append(f)
            self._failed(f.text, f.bug)

        survey = await self.ask(self.engine.heads_cached(), failed)
        if survey is None:  # not in the cache (or stale, or failed: shown)
            if failures:
                return
            job = self.attempt(self.engine.run_heads, post=self.post_message, on_error=failed)
            if job is not None:
                self.job = job
                status.say("surveying heads: a job (job line below; ctrl+x cancels); the result is kept for next time")
            return
        self.show_survey(survey)

    def _failed(self, error: str, bug: bool = False) -> None:
        status = self.query_one(StatusLine)
        info = self.engine.info
        if not bug and info is not None and any(self.engine.building_dashboards(x) for x in info.sae_layers):
            status.say("the head survey reads the dashboards, which are being built (job line below); "
                       "it runs by itself when they are done")
        else:
            status.error(error)

    def _is_mine(self, m: JobMessage) -> bool:
        return m.kind == "heads" and self.job is not None and m.job_id == self.job.id

    def on_job_progress(self, m: JobProgress) -> None:
        if self._is_mine(m):
            p = m.progress
            done = progress_counts(p)
            self.query_one(StatusLine).say(f"surveying heads: {p.stage}{done} (ctrl+x cancels)")

    def on_job_finished(self, m: JobFinished) -> None:
        if self._is_mine(m):
            self.job = None
            self.show_survey(m.result)

    def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._is_mine(m):
            self.job = None
            self.query_one(StatusLine).say("head survey cancelled; r runs it again")

    def on_job_failed(self, m: JobFailed) -> None:
        if self._is_mine(m):
            self.job = None
            self._failed(m.error, m.bug)

    def show_survey(self, survey: HeadsView) -> None:
        status = self.query_one(StatusLine)
        self.survey = survey
        grid = self.query_one("#heads-grid", DataTable)
        grid.clear(columns=True)
        n_heads = max((h.head for h in survey.heads), default=-1) + 1
        grid.add_column("", key="layer")
        for h in range(n_heads):
            grid.add_column(f"H{h}", key=f"h{h}")  # short: 4 heads fit beside the side panel at 80 columns
        by = {(h.layer, h.head): h for h in survey.heads}
        for layer in sorted({h.layer for h in survey.heads}):
            grid.add_row(f"L{layer} ", *[verdict_cell(by[(layer, h)]) if (layer, h) in by else "" for h in range(n_heads)], key=f"L{layer}")
        grid.focus()
        if n_heads:
            grid.cursor_coordinate = Coordinate(0, 1)  # the first head, so the side panel is never empty
            first = self._head_at_cursor()
            if first is not None:
                self.show_head(first)
        status.say(survey.summary)
        want = getattr(self, "_want", None)
        if want is not None:
            self._want = None
            self.select_head(*want)

    def _head_at_cursor(self) -> HeadView | None:
        if not self.survey:
            return None
        grid = self.query_one("#heads-grid", DataTable)
        row, col = grid.cursor_coordinate
        if col == 0:
            return None
        layers = sorted({h.layer for h in self.survey.heads})
        if row >= len(layers):
            return None
        for h in self.survey.heads:
            if h.layer == layers[row] and h.head == col - 1:
                return h
        return None

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        h = self._head_at_cursor()
        if h is not None:
            self.show_head(h)

    def action_open_head(self) -> None:
        h = self._head_at_cursor()
        if h is None:
            self.query_one(StatusLine).error("move onto a head cell first")
            return
        self.show_head(h)
        self.query_one("#head-features", DataTable).focus()  # enter opens the feature under the cursor

    def show_head(self, h: HeadView) -> None:
        self.head = h
        self.query_one("#head-detail", Static).update(Text(f"head {head_name(h.layer, h.head)}: {h.verdict}", style="bold"))
        t = self.query_one("#head-features", DataTable)
        t.clear(columns=True)
        t.add_column("feature", key="feature")
        t.add_column("share", key="share")
        t.add_column(ROLE_HEADER, key="role")
        for f in h.features[:10]:
            t.add_row(Text(str(f.id), justify="right"), Text(f"{f.share:.2f}", justify="right"), Text(_role(f)),
                      key=str(f.id))
        rule = Text(f"roles from {h.source} (* human label, labels.json; else the automatic role) · enter on a row "
                    "opens that feature · v its attention pattern", style="dim")
        if self.survey and self.survey.rule:
            rule.append(f"\nRule: {self.survey.rule}")
        self.query_one("#head-rule", Static).update(rule)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "head-features" and self.head is not None:
            self.wb.show_feature(self.head.layer, int(str(event.row_key.value)))

    def action_pattern(self) -> None:
        """The selected head's attention pattern on the explore prompt (or a sample sentence without one)."""
        from workbench.screens.pattern import PatternScreen

        h = self.head or self._head_at_cursor()
        if h is None:
            self.query_one(StatusLine).error("move onto a head cell first")
            return
        prompt = next((s.prompt for s in self.wb.screens_of(_explore()) if s.prompt.strip()), "") or SAMPLE_PROMPT
        self.app.push_screen(PatternScreen(self.engine, prompt, h.layer, h.head))

    def select_head(self, layer: int, head: int) -> None:
        """Put the grid's cursor on head layer.head (once the survey is there) and show it."""
        if not self.survey:
            self._want = (layer, head)
            return
        layers = sorted({h.layer for h in self.survey.heads})
        if layer in layers:
            self.query_one("#heads-grid", DataTable).cursor_coordinate = Coordinate(layers.index(layer), head + 1)
        h = self._head_at_cursor()
        if h is not None:
            self.show_head(h)

    def main_widget(self) -> DataTable:
        return self.query_one("#heads-grid", DataTable)

    def action_open_feature(self) -> None:
        """The feature under the cursor of the head's feature list (the first before one is chosen)."""
        if self.head and self.head.features:
            t = self.query_one("#head-features", DataTable)
            i = t.cursor_row if 0 <= t.cursor_row < len(self.head.features) else 0
            self.wb.show_feature(self.head.layer, self.head.features[i].id)

    def current_finding(self) -> Finding | None:
        h = self.head
        if h is None:
            return None
        body = md_table(["feature", "share", ROLE_COLUMN], [[f.id, f.share, _role(f)] for f in h.features[:10]])
        if self.survey and self.survey.rule:
            body += f"\n\nRule: {self.survey.rule}"
        info = self.engine.info
        return Finding(kind="head", title=f"head {head_name(h.layer, h.head)}: {h.verdict}", body=body,
                       model=info.model if info else "", saes=info.saes if info else "", layer=h.layer,
                       data={**h.to_dict(), "bars": {"title": f"head {head_name(h.layer, h.head)}: top features' share of its decoder norm",
                                                     "labels": [f"F{f.id} {_role(f)}"[:24] for f in h.features[:10]],
                                                     "values": [f.share for f in h.features[:10]]}})
