"""The paper's two circuit studies as runnable screens: induction heads (long vs short prefix) and IOI ablations."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Label, ProgressBar, Select, Static

from workbench.engine import ExperimentView, one_line
from workbench.findings import Finding, md_bars, md_table
from workbench.messages import JobFinished
from workbench.screens.base import NavBar, StatusLine
from workbench.screens.jobs import JobScreen
from workbench.widgets.bars import signed_bars


class InductionScreen(JobScreen):
    MODE = "induction"
    JOB_KIND = "induction"
    BINDINGS = [
        Binding("r", "run", "Run", show=True),
        Binding("x", "cancel", "Cancel", show=True),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.result: Any = None

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(classes="controls"):
            yield Label("sequences per prefix length ")
            yield Input("32", id="ind-n", type="integer", classes="small-input")
        yield StatusLine("r runs the synthetic repeated-prefix experiment", id="ind-status")
        yield ProgressBar(total=1, id="ind-progress", show_eta=True)
        yield DataTable(id="ind-table", zebra_stripes=True, cursor_type="row")
        yield Static("", id="ind-rule", classes="dim-note")
        yield Footer()

    def help_about(self) -> str:
        return "Repeated random-token sequences; a head's score is its attention from the repeat to the token after the first occurrence."

    def action_run(self) -> None:
        status = self.query_one(StatusLine)
        if self.job_running():
            status.error("already running: x cancels")
            return
        text = self.query_one("#ind-n", Input).value.strip()
        if not text.isdigit() or int(text) <= 0:
            status.error(f"sequences per prefix length must be a whole number > 0, got {text!r}")
            return
        try:
            job = self.engine.run_induction(int(text), post=self.post_message)
        except Exception as exc:  # noqa: BLE001
            status.error(one_line(exc))
            return
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.started(job, f"running the induction experiment on {text} sequences per prefix length ...")

    def on_job_finished(self, m: JobFinished) -> None:
        if m.kind != self.JOB_KIND:
            return
        self.result = m.result
        self.query_one(ProgressBar).update(total=1, progress=1)
        res = m.result
        table = self.query_one("#ind-table", DataTable)
        table.clear(columns=True)
        lengths = [str(p) for p in res.prefix_lengths]
        table.add_columns("head", *lengths, "kind")
        for h in sorted(res.heads, key=lambda h: (h.kind == "not induction", -max(h.scores.values(), default=0))):
            style = "bold green" if h.kind == "long-prefix" else "bold cyan" if h.kind == "short-prefix" else "dim"
            table.add_row(f"{h.layer}.{h.head}", *[f"{h.scores[k]:.2f}" for k in lengths], Text(h.kind, style=style))
        found = res.induction_heads()
        self.query_one(StatusLine).say(
            f"{len(found)} induction head(s): " + ", ".join(f"{h.layer}.{h.head} ({h.kind})" for h in found[:6])
            if found else "no induction heads found"
        )
        self.query_one("#ind-rule", Static).update(Text(res.rule, style="dim"))

    def current_finding(self) -> Finding | None:
        if self.result is None:
            return None
        res = self.result
        lengths = [str(p) for p in res.prefix_lengths]
        rows = [[f"{h.layer}.{h.head}", *[h.scores[k] for k in lengths], h.kind] for h in res.heads]
        body = md_table(["head", *lengths, "kind"], rows) + f"\n\nRule: {res.rule}"
        info = self.engine.info
        return Finding(kind="experiment", title="induction heads by prefix length", body=body,
                       model=info.model if info else "", data=res.to_dict())


IOI_EXPERIMENTS = ["clean", "splice", "heads", "features", "path", "noising"]


class IOIScreen(JobScreen):
    MODE = "ioi"
    JOB_KIND = "ioi"
    BINDINGS = [
        Binding("r", "run", "Run", show=True),
        Binding("x", "cancel", "Cancel", show=True),
        Binding("o", "sort", "Sort", show=True),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.result: ExperimentView | None = None
        self.records: list[dict[str, Any]] = []
        self.sort_key: str | None = None
        self.sort_desc = True

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(classes="controls"):
            yield Select([(e, e) for e in IOI_EXPERIMENTS], value="heads", allow_blank=False, id="ioi-exp")
            yield Label(" layer ")
            yield Input("", id="ioi-layer", placeholder="L", classes="small-input")
            yield Label(" N ")
            yield Input("24", id="ioi-n", type="integer", classes="small-input")
        yield StatusLine("r runs the chosen experiment; x cancels", id="ioi-status")
        yield ProgressBar(total=1, id="ioi-progress", show_eta=True)
        with Horizontal(id="ioi-body"):
            yield DataTable(id="ioi-table", zebra_stripes=True, cursor_type="row")
            with VerticalScroll(id="ioi-side"):
                yield Static("", id="ioi-bars")
        yield Footer()

    def help_about(self) -> str:
        return "IOI prompts (ABBA/BABA); metric is the logit difference IO - S. Feature ablations touch the S2 position only."

    def on_mount(self) -> None:
        info = self.engine.info
        if info is not None and info.sae_layers:
            self.query_one("#ioi-layer", Input).value = str(info.sae_layers[-1])

    def action_run(self) -> None:
        status = self.query_one(StatusLine)
        if self.job_running():
            status.error("already running: x cancels")
            return
        exp = str(self.query_one("#ioi-exp", Select).value)
        n_text = self.query_one("#ioi-n", Input).value.strip()
        layer_text = self.query_one("#ioi-layer", Input).value.strip()
        if not n_text.isdigit() or int(n_text) <= 0:
            status.error(f"N must be a whole number > 0, got {n_text!r}")
            return
        layer = None
        if layer_text:
            if not layer_text.isdigit():
                status.error(f"layer must be a whole number, got {layer_text!r}")
                return
            layer = int(layer_text)
            info = self.engine.info
            if info is not None and not 0 <= layer < info.n_layers:
                status.error(f"layer {layer} is outside the model (layers 0..{info.n_layers - 1})")
                return
        try:
            job = self.engine.run_ioi(exp, int(n_text), layer, post=self.post_message)
        except Exception as exc:  # noqa: BLE001
            status.error(one_line(exc))
            return
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.started(job, f"running {exp} on {n_text} prompts ...")

    def on_job_finished(self, m: JobFinished) -> None:
        if m.kind != self.JOB_KIND:
            return
        self.result = m.result
        self.query_one(ProgressBar).update(total=1, progress=1)
        view: ExperimentView = m.result
        self.records = [dict(r) for r in view.records]
        self.sort_key = view.sort_key
        self.draw_table()
        self.query_one(StatusLine).say(view.summary)

    def draw_table(self) -> None:
        table = self.query_one("#ioi-table", DataTable)
        table.clear(columns=True)
        if not self.records:
            self.query_one("#ioi-bars", Static).update("")
            return
        cols = list(self.records[0].keys())
        table.add_columns(*cols)
        recs = self.records
        if self.sort_key in cols:
            recs = sorted(recs, key=lambda r: _num(r.get(self.sort_key)), reverse=self.sort_desc)
        for r in recs:
            table.add_row(*[f"{v:+.4f}" if isinstance(v, float) else str(v) for v in r.values()])
        bar_key = self.sort_key or next((c for c in cols if isinstance(recs[0].get(c), float)), None)
        if bar_key:
            top = recs[:12]
            # label each bar by the record's identifying (non-numeric-result) fields, e.g. layer.head
            ids = [c for c in cols if not isinstance(recs[0].get(c), float)] or cols[:1]
            labels = [".".join(str(r[c]) for c in ids) for r in top]
            self.query_one("#ioi-bars", Static).update(
                Text(f"{bar_key}\n", style="bold")
                + signed_bars(labels, [_num(r[bar_key]) for r in top], width=16, label_width=10)
            )

    def action_sort(self) -> None:
        if not self.records:
            return
        numeric = [c for c, v in self.records[0].items() if isinstance(v, (int, float))]
        if not numeric:
            return
        if self.sort_key in numeric and self.sort_desc:
            self.sort_desc = False
        else:
            i = numeric.index(self.sort_key) + 1 if self.sort_key in numeric else 0
            self.sort_key, self.sort_desc = numeric[i % len(numeric)], True
        self.draw_table()
        self.query_one(StatusLine).say(f"sorted by {self.sort_key} {'descending' if self.sort_desc else 'ascending'}")

    def current_finding(self) -> Finding | None:
        if self.result is None:
            return None
        v = self.result
        cols = list(self.records[0].keys()) if self.records else []
        body = [v.summary, ""]
        if cols:
            body.append(md_table(cols, [list(r.values()) for r in self.records[:20]]))
            if self.sort_key:
                top = sorted(self.records, key=lambda r: _num(r.get(self.sort_key)), reverse=True)[:10]
                body += ["", md_bars([str(r[cols[0]]) for r in top], [_num(r[self.sort_key]) for r in top])]
        info = self.engine.info
        return Finding(kind="experiment", title=f"IOI {v.experiment} (N={v.n_prompts})",
                       body="\n".join(body), model=info.model if info else "", layer=v.layer,
                       data={**v.fields, "summary": v.summary, "records": [dict(r) for r in v.records],
                             "sort_key": v.sort_key})


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("-inf")
