"""The paper's two circuit studies as runnable screens: induction heads (long vs short prefix) and IOI ablations."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Input, Label, ProgressBar, Select, Static

from workbench.widgets.footer import WorkbenchFooter
from workbench.engine import QUICK_RUNS, ExperimentView, InductionView, full_run_sizes, head_name
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
        self.result: InductionView | None = None
        self.ran_n = QUICK_RUNS["induction"]  # N of the last run started

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(classes="controls"):
            yield Label("sequences per prefix length ")
            yield Input(str(QUICK_RUNS["induction"]), id="ind-n", type="integer", classes="small-input")
        yield StatusLine("r runs the synthetic repeated-prefix experiment (a quick run; the line below says the "
                         "full one)", id="ind-status")
        yield ProgressBar(total=1, id="ind-progress", show_eta=True)
        yield DataTable(id="ind-table", zebra_stripes=True, cursor_type="row")
        yield Static("", id="ind-rule", classes="dim-note")
        yield WorkbenchFooter()

    def on_mount(self) -> None:
        self.query_one("#ind-rule", Static).update(Text(self.quick_note(QUICK_RUNS["induction"]), style="dim"))
        self.restore_last()

    def quick_note(self, n: int) -> str:
        """Says when N is below the CLI's default, and the command for the full run."""
        full = full_run_sizes()["induction"]
        if n >= full:
            return f"N = {n} sequences per prefix length (the CLI's default is {full})"
        return (f"quick run: N = {n} sequences per prefix length; the paper's and the CLI's full run uses {full}: "
                f"attnscope induction --n {full}")

    def help_about(self) -> str:
        return "Repeated random-token sequences; a head's score is its attention from the repeat to the token after the first occurrence."

    def action_run(self) -> None:
        self.ask_before_replacing("the induction experiment", self.run_now)

    def run_now(self) -> None:
        status = self.query_one(StatusLine)
        if self.job_running():
            status.error("already running: x cancels")
            return
        text = self.query_one("#ind-n", Input).value.strip()
        if not text.isdigit() or int(text) <= 0:
            status.error(f"sequences per prefix length must be a whole number > 0, got {text!r}")
            return
        job = self.attempt(self.engine.run_induction, int(text), post=self.post_message)
        if job is None:
            return
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.ran_n = int(text)
        self.started(job, f"running the induction experiment on {text} sequences per prefix length ...")

    def restore_last(self) -> None:
        """The last result, from an earlier launch too (the session file)."""
        saved = self.wb.session.get("induction")  # the last result, from an earlier launch too
        if isinstance(saved, dict) and self.result is None:
            try:
                self.show_result(self.engine.restore_induction(saved))
            except (TypeError, KeyError, ValueError):
                return  # a result saved by another version: run again
            self.query_one(StatusLine).say("the last result (r runs again) · " + self.query_one(StatusLine).message)

    def on_job_finished(self, m: JobFinished) -> None:
        if m.kind != self.JOB_KIND:
            return
        self.query_one(ProgressBar).update(total=1, progress=1)
        self.show_result(m.result)
        self.wb.session.put("induction", self.engine.induction_to_dict(m.result))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a head's row: that head on the heads screen (its top features, its pattern with v)."""
        key = str(event.row_key.value or "")
        if event.data_table.id == "ind-table" and "." in key:
            layer, head = (int(x) for x in key.split("."))
            self.wb.show_head(layer, head)

    def show_result(self, res: InductionView) -> None:
        self.result = res
        table = self.query_one("#ind-table", DataTable)
        table.clear(columns=True)
        lengths = [str(p) for p in res.prefix_lengths]
        table.add_columns("head", *[f"prefix {k}" for k in lengths], "kind")
        for h in sorted(res.heads, key=lambda h: (h.kind == "not induction", -max(h.scores.values(), default=0))):
            style = "bold green" if h.kind == "long-prefix" else "bold cyan" if h.kind == "short-prefix" else "dim"
            table.add_row(head_name(h.layer, h.head), *[f"{h.scores[k]:.2f}" for k in lengths], Text(h.kind, style=style),
                          key=f"{h.layer}.{h.head}")
        found = res.found
        self.query_one(StatusLine).say(
            f"{len(found)} induction head(s): " + ", ".join(f"{head_name(h.layer, h.head)} ({h.kind})" for h in found[:6])
            if found else "no induction heads found"
        )
        self.query_one("#ind-rule", Static).update(Text(
            self.quick_note(self.ran_n) + "\n" + "prefix N: the head's induction score on repeats of an N-token random prefix (its attention from each "
            f"token of the second copy to the token after it in the first copy). {res.rule}. Sampling {res.sampling}: "
            f"{res.design}", style="dim"))

    def current_finding(self) -> Finding | None:
        if self.result is None:
            return None
        res = self.result
        lengths = [str(p) for p in res.prefix_lengths]
        rows = [[head_name(h.layer, h.head), *[h.scores[k] for k in lengths], h.kind] for h in res.heads]
        setup = (f"N = {res.n_per_length} sequences per prefix length of {res.seq_len} tokens · seed {res.seed} · "
                 f"synthetic random tokens (no corpus split) · sampling {res.sampling}")
        body = (setup + "\n\n" + md_table(["head", *[f"prefix {k}" for k in lengths], "kind"], rows)
                + f"\n\nRule: {res.rule}" + f"\n\nSampling {res.sampling}: {res.design}")
        info = self.engine.info
        best = sorted(res.heads, key=lambda h: -max(h.scores.values(), default=0))[:12]
        bars = {"title": f"induction score at prefix {lengths[-1]}" if lengths else "induction score",
                "labels": [head_name(h.layer, h.head) for h in best],
                "values": [h.scores[lengths[-1]] if lengths else 0.0 for h in best]}
        return Finding(kind="experiment", title=f"induction heads by prefix length (N={res.n_per_length}, seed {res.seed})",
                       body=body,
                       model=info.model if info else "", data={**res.data, "bars": bars})


IOI_EXPERIMENTS = ["clean", "splice", "heads", "features", "path", "noising"]

# what each experiment's columns mean (shown under the table; the logit diff is logit(IO) - logit(S) at END)
IOI_TERMS = {
    "clean": "logit_diff: logit(IO) - logit(S) at END; accuracy: share of prompts where it is > 0",
    "splice": "recovered: logit diff with the SAE spliced in / clean; max_abs_change: the largest change of any "
              "one prompt's logit diff; error_term: the SAE's reconstruction error added back",
    "heads": "zero_delta: change in logit diff when the head's z is zeroed; % clean: that change as a share of the "
             "clean logit diff; mean_delta: the same with the head's mean z",
    "features": "delta: mean change in logit diff when the feature is zero-ablated at S2 only (ABBA / BABA: per "
                "name order); n_active: prompts where it fires at S2; mean_act: its mean activation at S2 on those "
                "prompts",
    "path": "delta: change in logit diff when the feature's direction is removed from the value input of the "
            "later heads listed, at S2 (a bar: F<id> via one head, or via all the later heads)",
    "noising": "recovered: logit diff after the attention output at S2 (of the layers listed) is taken from a "
               "corrupted prompt, as a share of the clean logit diff. "
               "names: other names (ABB->CDD); abs_pos: a sentence prepended; rel_pos: a clause after the name "
               "pair; alongside: 'and' -> 'alongside'; names_abs: both",
}


def ioi_quick_note(experiment: str, n: int, layer: int | None) -> str:
    """Says when N is below the CLI's default, and the command for the full run (same experiment and layer)."""
    full = full_run_sizes()["ioi"]
    if n >= full:
        return f"N = {n} prompts (the CLI's default is {full})"
    cmd = f"attnscope ioi -e {experiment} --n {full}" + (f" --layer {layer}" if layer is not None else "")
    return f"quick run: N = {n} prompts; the paper's and the CLI's full run uses {full}: {cmd}"


IOI_USES_LAYER = {"features", "path"}  # the experiments that read the layer box (the SAE layer at S2)
NOISING_REFERENCES = {"S2-only": "S2-only: the clean prompts with only S2 replaced by a third name"}


def references_line(refs: list[dict[str, Any]]) -> str:
    """Noising's reference logit diffs in one line, as shares of clean ('recovered', as the table)."""
    parts = []
    for r in refs:
        name = str(r.get("reference", "?")).removeprefix("corrupted (").removesuffix(")")
        parts.append(f"{name} {float(r.get('logit_diff', 0.0)):+.2f} ({float(r.get('fraction', 0.0)):.0%})")
    return ("references, logit diff (recovered): " + ", ".join(parts) + ". " + " ".join(NOISING_REFERENCES.values())
            + "; the others: each corrupted prompt itself")


def default_ioi_layer(sae_layers: list[int], n_layers: int) -> tuple[int | None, str]:
    """The layer a feature ablation at S2 can act from, and why: the one nearest the middle among SAE layers
    that have attention layers after them (an ablation at S2 reaches END only through later attention)."""
    if not sae_layers:
        return None, ""
    useful = [layer for layer in sae_layers if layer < n_layers - 1]
    if not useful:
        return sae_layers[-1], no_effect_reason(sae_layers[-1], n_layers)
    middle = (n_layers - 1) // 2
    layer = min(useful, key=lambda x: (abs(x - middle), x))
    later = f"layer {layer + 1}" if layer + 1 == n_layers - 1 else f"layers {layer + 1}-{n_layers - 1}"
    return layer, (f"layer {layer} by default: a feature ablated at S2 reaches the logit at END only through "
                   f"attention in later layers ({later} here)")


def no_effect_reason(layer: int, n_layers: int) -> str:
    """Why an S2 feature ablation at `layer` changes nothing ('' when it can)."""
    if layer < n_layers - 1:
        return ""
    return (f"layer {layer}'s features at S2 cannot affect the logit at END through attention in later layers: "
            "there are none (every delta is 0); choose an earlier layer")


def display_records(records: list[dict[str, Any]], clean: float | None) -> list[dict[str, Any]]:
    """Rows as shown: `layer` and `head` joined into one `head` column (L0H2); zero_delta also as % of clean."""
    out = []
    for r in records:
        row: dict[str, Any] = {}
        if "layer" in r and "head" in r and isinstance(r["head"], int):
            row["head"] = head_name(r["layer"], r["head"])
        for k, v in r.items():
            if k in ("layer", "head") and "head" in row and isinstance(r.get("head"), int):
                continue
            row[k] = v
            if k == "zero_delta" and clean:
                row["% clean"] = v / clean
        out.append(row)
    return out


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
        self.layer_why = ""  # why the default layer (features, path)
        self.terms = ""  # what the shown experiment's columns mean (under the bars)
        self.sort_key: str | None = None
        self.sort_desc = True

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(classes="controls"):
            yield Select([(e, e) for e in IOI_EXPERIMENTS], value="heads", allow_blank=False, id="ioi-exp")
            yield Label(" layer ", id="ioi-layer-label")
            yield Input("", id="ioi-layer", placeholder="L", classes="small-input")
            yield Label(" N ")
            yield Input(str(QUICK_RUNS["ioi"]), id="ioi-n", type="integer", classes="small-input")
        yield StatusLine("r runs the chosen experiment; x cancels", id="ioi-status")
        yield ProgressBar(total=1, id="ioi-progress", show_eta=True)
        with Horizontal(id="ioi-body"):
            yield DataTable(id="ioi-table", zebra_stripes=True, cursor_type="row")
            with VerticalScroll(id="ioi-side"):
                yield Static("", id="ioi-bars")
        yield Static("", id="ioi-note", classes="dim-note")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return "IOI prompts (ABBA/BABA); metric is the logit difference IO - S. Feature ablations touch the S2 position only."

    def on_mount(self) -> None:
        info = self.engine.info
        if info is not None and info.sae_layers:
            layer, why = default_ioi_layer(list(info.sae_layers), info.n_layers)
            self.query_one("#ioi-layer", Input).value = str(layer)
            self.layer_why = why
        self.show_layer_box("heads")

    @on(Select.Changed, "#ioi-exp")
    def experiment_changed(self, event: Select.Changed) -> None:
        self.show_layer_box(str(event.value))

    def show_layer_box(self, experiment: str) -> None:
        """The layer box only for the experiments that read it (features, path)."""
        used = experiment in IOI_USES_LAYER
        for w in (self.query_one("#ioi-layer", Input), self.query_one("#ioi-layer-label", Label)):
            w.display = used
        if self.result is None:  # before a run: the default layer's reason (where it counts) and the quick-run note
            layer = self.query_one("#ioi-layer", Input).value.strip()
            n = self.query_one("#ioi-n", Input).value.strip()
            quick = ioi_quick_note(experiment, int(n) if n.isdigit() else QUICK_RUNS["ioi"],
                                   int(layer) if used and layer.isdigit() else None)
            self.query_one("#ioi-note", Static).update((self.layer_why + "\n" if used and self.layer_why else "") + quick)
        saved = self.wb.session.get("ioi")  # the last result, from an earlier launch too
        if isinstance(saved, dict) and self.result is None:
            try:
                self.show_result(self.engine.experiment_from_dict(saved))
            except (TypeError, KeyError, ValueError):
                return
            self.query_one(StatusLine).say("the last result (r runs again) · " + self.query_one(StatusLine).message)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "ioi-layer":
            info = self.engine.info
            text = event.value.strip()
            if info is not None and text.isdigit():
                why = no_effect_reason(int(text), info.n_layers)
                if why:
                    self.query_one("#ioi-note", Static).update(Text(why, style="yellow"))

    def action_run(self) -> None:
        self.ask_before_replacing(f"IOI {self.query_one('#ioi-exp', Select).value}", self.run_now)

    def run_now(self) -> None:
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
        job = self.attempt(self.engine.run_ioi, exp, int(n_text), layer, post=self.post_message)
        if job is None:
            return
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.started(job, f"running {exp} on {n_text} prompts ...")

    def on_job_finished(self, m: JobFinished) -> None:
        if m.kind != self.JOB_KIND:
            return
        self.query_one(ProgressBar).update(total=1, progress=1)
        self.show_result(m.result)
        self.wb.session.put("ioi", self.engine.experiment_to_dict(m.result))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row: a feature row opens that feature's dashboard, a head row that head on the heads screen."""
        if event.data_table.id != "ioi-table" or self.result is None:
            return
        shown = getattr(self, "shown", [])
        if not 0 <= event.cursor_row < len(shown):
            return
        r = shown[event.cursor_row]
        if isinstance(r.get("feature"), int) and self.result.layer is not None:
            self.wb.show_feature(self.result.layer, r["feature"])
        elif row_head(r) is not None:
            self.wb.show_head(*row_head(r))  # type: ignore[misc]
        else:
            self.query_one(StatusLine).say("this row names no feature or head")

    def show_result(self, view: ExperimentView) -> None:
        self.result = view
        self.records = display_records([dict(r) for r in view.records], view.clean_logit_diff)
        self.sort_key = view.sort_key
        self.query_one(StatusLine).say(view.summary)
        terms = IOI_TERMS.get(view.experiment, "")
        if view.experiment == "noising" and isinstance(view.data.get("references"), list):
            terms = terms + "\n\n" + references_line(view.data["references"])
        self.terms = terms
        self.draw_table()
        note = ioi_quick_note(view.experiment, view.n_prompts, view.layer if view.experiment in IOI_USES_LAYER else None)
        why = no_effect_reason(view.layer, self.engine.info.n_layers) if view.layer is not None and self.engine.info else ""
        if why and view.experiment in IOI_USES_LAYER:
            note = why + "\n" + note
        self.query_one("#ioi-note", Static).update(note)

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
        self.shown = recs  # in table order: what enter on a row opens
        for r in recs:
            table.add_row(*[format_cell(k, v) for k, v in r.items()])
        bar_key = self.sort_key or next((c for c in cols if isinstance(recs[0].get(c), float)), None)
        if bar_key:
            top = recs[:12]
            labels = unique_labels([bar_label(r) for r in top])
            label_w = max(len(x) for x in labels) + 1  # whole labels: never cut to look alike
            room = self.query_one("#ioi-bars", Static).size.width or 34
            bars = (Text(f"{bar_key}\n", style="bold")
                    + signed_bars(labels, [_num(r[bar_key]) for r in top], width=max(8, min(16, room - label_w - 9)),
                                  label_width=label_w))
            if self.terms:  # what the columns mean, under the bars (the side panel scrolls; the table keeps its rows)
                bars += Text("\n\n" + self.terms, style="dim")
            self.query_one("#ioi-bars", Static).update(bars)

    def bars_data(self) -> dict[str, Any]:
        """The side panel's bars (top 12 rows by the sort column), for the exported figure."""
        if not self.records or not self.sort_key:
            return {}
        top = sorted(self.records, key=lambda r: _num(r.get(self.sort_key)), reverse=self.sort_desc)[:12]
        return {"title": f"IOI {self.result.experiment if self.result else ''}: {self.sort_key}",
                "labels": unique_labels([bar_label(r) for r in top]), "values": [_num(r[self.sort_key]) for r in top]}

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
        f = v.settings
        setup = [f"N = {v.n_prompts} prompts", f"split {f.get('split', '?')}", f"seed {f.get('seed', '?')}"]
        if v.experiment in IOI_USES_LAYER and v.layer is not None:
            setup.append(f"SAE layer {v.layer}")
        body = [v.summary, "", " · ".join(setup), ""]
        if cols:
            body.append(md_table(cols, [list(r.values()) for r in self.records[:20]]))
            if self.sort_key:
                top = sorted(self.records, key=lambda r: _num(r.get(self.sort_key)), reverse=True)[:10]
                body += ["", md_bars(unique_labels([bar_label(r) for r in top]), [_num(r[self.sort_key]) for r in top])]
        info = self.engine.info
        uses_saes = v.experiment in {"splice", "features", "path"}
        return Finding(kind="experiment", title=f"IOI {v.experiment} (N={v.n_prompts}, seed {f.get('seed', '?')}, "
                       f"split {f.get('split', '?')})",
                       body="\n".join(body), model=info.model if info else "", layer=v.layer,
                       saes=info.saes if info and uses_saes else "",
                       data={**v.settings, "experiment": v.experiment, "clean_logit_diff": v.clean_logit_diff,
                             "summary": v.summary, "records": [dict(r) for r in v.records],
                             "sort_key": v.sort_key, "bars": self.bars_data()})


def row_head(r: dict[str, Any]) -> tuple[int, int] | None:
    """The head a table row names: `layer` and `head` as numbers, or `head` written L1H2 (or 1.2); None when none."""
    if isinstance(r.get("layer"), int) and isinstance(r.get("head"), int):
        return r["layer"], r["head"]
    m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)\.(\d+))\s*", str(r.get("head", "")))
    if m is None:
        return None
    a, b, c, d = m.groups()
    return (int(a), int(b)) if a is not None else (int(c), int(d))


def format_cell(key: str, v: Any) -> str:
    if key == "% clean" and isinstance(v, float):
        return f"{v:+.0%}"
    if key == "accuracy" and isinstance(v, float):
        return f"{v:.0%}"  # a share: no sign
    return f"{v:+.4f}" if isinstance(v, float) else str(v)


def bar_label(r: dict[str, Any]) -> str:
    """What a bar is about, never fields joined with dots: a head as L0H2, a feature as F<id> (with the heads a
    path runs through: one head, or 'all' later heads), a splice's layers (+err with the error term), a noising
    corruption with its layers, else the first field."""
    if "head" in r and isinstance(r["head"], str) and "feature" not in r:
        return r["head"]
    if "feature" in r:
        heads = str(r.get("heads", ""))
        if not heads:
            return f"F{r['feature']}"
        return f"F{r['feature']} " + ("all" if "," in heads else heads)
    if "corruption" in r:
        return f"{r['corruption']} L{r['layers']}" if "layers" in r else str(r["corruption"])
    if "layers" in r:
        layers = str(r["layers"])
        return (layers if layers == "all" else f"L{layers}") + (" +err" if r.get("error_term") is True else "")
    if "reference" in r:
        return str(r["reference"]).removeprefix("corrupted (").removesuffix(")")
    return str(next(iter(r.values())))


def unique_labels(labels: list[str]) -> list[str]:
    """Labels made distinct: a repeated one gets #2, #3 (no two bars may read the same)."""
    seen: dict[str, int] = {}
    out = []
    for x in labels:
        seen[x] = seen.get(x, 0) + 1
        out.append(x if seen[x] == 1 else f"{x} #{seen[x]}")
    return out


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("-inf")
