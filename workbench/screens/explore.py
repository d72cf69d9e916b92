"""The home screen: type a prompt, walk its token x feature heatmap, read why the selected feature fired."""

from __future__ import annotations


import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Input, Static

from workbench.widgets.edit import UndoInput
from workbench.widgets.footer import WorkbenchFooter
from workbench.engine import CellDetail, DashboardView, PromptView, density_text, head_name
from workbench.engine.research import InterventionView, PredictionsView
from workbench.findings import Finding, md_bars, md_context, md_number, md_table
from workbench.messages import CellSelected
from workbench.screens.base import Failure, NavBar, StatusLine, WorkbenchScreen
from workbench.screens.modals import AskScreen
from workbench.screens.pattern import PatternScreen
from workbench.widgets.bars import HeadBars, SourceStrip
from workbench.widgets.heatmap import Heatmap, HeatmapData, escape_token, visible_token
from workbench.widgets.predict import PredictPanel

HEATMAP_LEGEND = Text("shade: activation / the feature's peak on this prompt · number: activation · ·: off",
                      style="dim", overflow="ellipsis", no_wrap=False)
TYPING_DELAY_S = 0.25  # wait this long after the last keystroke before asking the engine


def short_path(spec: str, width: int = 28) -> str:
    """An SAE set's name for a status line: itself when short, else '…/' and its last two path parts."""
    if len(spec) <= width:
        return spec
    parts = spec.rstrip("/").split("/")
    return "…/" + "/".join(parts[-2:])


class ExploreScreen(WorkbenchScreen):
    MODE = "explore"
    AUTO_FOCUS = "#heatmap"  # back on explore, keys act on the heatmap; / types in the prompt
    BINDINGS = [
        Binding("enter", "open_feature", "Feature", show=True),
        Binding("t", "trace", "Trace cell", show=True),
        Binding("left_square_bracket", "layer(-1)", "Layer-", show=True),
        Binding("right_square_bracket", "layer(1)", "Layer+", show=True),
        Binding("slash", "focus_prompt", "Prompt", show=True),
        Binding("escape", "focus_heatmap", "Leave the prompt", show=False),
        Binding("s", "open_saes", "SAEs", show=True),
        Binding("a", "ablate", "Ablate", show=True),
        Binding("i", "intervene_form", "Set/scale", show=True),
        Binding("l", "toggle_loss", "Loss/token", show=False),
        Binding("v", "pattern", "Head pattern", show=False),
        Binding("c", "compare", "Compare", show=False),
        Binding("up", "history(-1)", "Earlier prompt", show=False),
        Binding("down", "history(1)", "Later prompt", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sae_layer: int | None = None
        self.prompt = ""
        self.result: PromptView | None = None
        self.detail: CellDetail | None = None
        self.summary: DashboardView | None = None
        self._typing: Timer | None = None
        self.predictions: PredictionsView | None = None
        self.intervention: InterventionView | None = None
        self.show_loss = False
        self._goto: tuple[int, int] | None = None  # (pos, feature) to select when the next heatmap arrives
        self._history_at: int | None = None
        self.waiting_on = ""  # the running job a pending prompt waits on ("" when none)

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        # / edits the prompt: nothing selected, so the first key never replaces it; ctrl+z undoes, up / down history
        yield UndoInput(placeholder="Type a prompt, enter to run (the heatmap updates as you type)", id="prompt")
        yield StatusLine("", id="explore-status")
        with Horizontal(id="explore-body"):
            with Vertical(id="heatmap-box"):
                yield Heatmap(id="heatmap")
                yield Static(HEATMAP_LEGEND, id="heatmap-legend")
            with VerticalScroll(id="explore-side"):
                # shown while the panel below is not yet for the cell the heatmap selects (a job holds the engine)
                yield Static("", id="side-pending", classes="hidden")
                yield PredictPanel("", id="predict-panel")
                yield Static("", id="cell-title")
                yield HeadBars("DFA by head", id="head-bars")
                yield SourceStrip(id="source-strip")
                yield Static("", id="feature-summary")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return (
            "Rows are tokens, columns the prompt's strongest features; a cell's shade is its activation relative to "
            "that feature's peak on the prompt. Arrow keys walk the cells; the side panel splits the selected "
            "feature's pre-activation by head and by source token (DFA)."
        )

    # ---- startup --------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        prompt_input = self.query_one("#prompt", UndoInput)
        start = getattr(self.app, "start_prompt", "")
        if start and not self.prompt:
            self.prompt = start
            prompt_input.value = start
            prompt_input.reset_undo()  # undo stops at the prompt the workbench started with
        self.query_one("#heatmap", Heatmap).focus()  # keys act at once; / types a prompt
        self.run_worker(self._open(), group="open", exclusive=True)

    async def _open(self) -> None:
        status = self.query_one("#explore-status", StatusLine)
        if self.engine.info is None:
            status.say(f"loading {self.engine.model_spec} and SAEs {self.engine.saes_spec} ...")
        def failed(f: Failure) -> None:  # a model that will not load is shown, not raised
            status.error(f.text)  # says itself whether the model or the SAEs failed
            self.notify(f.text, title="Engine", severity="error")

        info = await self.ask(self.engine.open(), failed)
        if info is None:
            return
        self.wb.engine_ready(info)
        if self.sae_layer is None or self.sae_layer not in info.d_sae:
            want = self.wb.start_layer
            self.sae_layer = want if want in info.d_sae else info.sae_layers[0]
        self.refresh_status()
        if self.prompt.strip():
            self.request_features()

    def refresh_status(self, extra: str = "") -> None:
        info = self.engine.info
        status = self.query_one("#explore-status", StatusLine)
        if info is None:
            return
        parts = [info.model, f"layer {self.sae_layer}", f"SAE {info.d_sae.get(self.sae_layer, '?')} features",
                 f"SAEs {short_path(info.saes)}"]
        if self.result:
            parts.insert(0, f"{len(self.result.tokens)} tokens")
        if extra:
            parts.append(extra)
        residency = self.engine.sae_residency()
        if residency:
            parts.append(residency)
        status.say(" · ".join(parts))

    # ---- prompt -> heatmap ----------------------------------------------------------------------------

    @on(Input.Changed, "#prompt")
    def prompt_changed(self, event: Input.Changed) -> None:
        if self._history_at is not None and event.value not in self.wb.prompt_history():
            self._history_at = None
        self.prompt = event.value
        if self._typing is not None:
            self._typing.stop()
        if event.value.strip():
            self._typing = self.set_timer(TYPING_DELAY_S, self.request_features)

    @on(Input.Submitted, "#prompt")
    def prompt_submitted(self, event: Input.Submitted) -> None:
        self.prompt = event.value
        if self._typing is not None:
            self._typing.stop()
        if not event.value.strip():
            self.query_one("#explore-status", StatusLine).error("the prompt is empty: type some text first")
            return
        self.wb.remember_prompt(event.value)
        self._history_at = None
        self.request_features()
        self.query_one("#heatmap", Heatmap).focus()

    def request_features(self) -> None:
        if self.engine.info is None or self.sae_layer is None:
            return
        self.run_worker(self._features(self.prompt, self.sae_layer), group="features", exclusive=True)

    def running_job(self) -> str:
        """The label of the job that holds the engine's thread now ("" when none): quick requests wait for its steps."""
        running = [h for h in self.engine.worker.jobs() if h.state == "running"]
        return running[0].label if running else ""

    def side_pending(self, what: str) -> None:
        """Mark the side panel as not yet showing `what` (it still shows the previous cell, dimmed), as the status
        line marks a pending heatmap."""
        if self.detail is None and self.predictions is None:
            return  # nothing shown yet: nothing to mistake for the new cell
        job = self.running_job()
        wait = f" (waiting for a step of {job})" if job else ""
        mark = self.query_one("#side-pending", Static)
        mark.update(Text(f"pending: {what}{wait} ...", style="bold yellow"))
        mark.remove_class("hidden")
        self.query_one("#explore-side").add_class("-pending")

    def side_ready(self) -> None:
        self.query_one("#side-pending", Static).add_class("hidden")
        self.query_one("#explore-side").remove_class("-pending")

    async def _features(self, prompt: str, layer: int) -> None:
        status = self.query_one("#explore-status", StatusLine)
        job = self.running_job()
        if job:  # the engine's one thread is in a job: this prompt is answered at the job's next step
            self.waiting_on = job
            status.say(f"pending: waiting for a step of {job} (the heatmap answers between its steps) ...")
        self.side_pending(f"layer {layer}" if self.result is None or self.result.layer != layer else "the new prompt")

        def failed(f: Failure) -> None:
            status.error(f.text)
            self.side_ready()
            if f.bug:
                self.notify(f.text, title="Explore", severity="error")

        try:
            res = await self.ask(self.engine.features(prompt, layer), failed)
        finally:
            self.waiting_on = ""
        if res is None:
            return
        if not res.columns:
            self.side_ready()  # no cell to select: the panel's own text says so below
        first = self.result is None  # the first heatmap of the session
        self.result = res
        self.intervention = None
        if self.predictions is None or self.predictions.prompt != prompt:
            self.run_worker(self._predictions(prompt), group="predict", exclusive=True)
        self.wb.start_auto_build()  # the first heatmap is drawn: background work may start
        values = res.values if res.values is not None else np.zeros((len(res.tokens), 0))
        self.query_one("#heatmap", Heatmap).set_data(HeatmapData(res.tokens, res.columns, values))
        if self._goto is not None:
            pos, feature = self._goto
            self._goto = None
            if feature in res.columns and pos < len(res.tokens):
                self.query_one("#heatmap", Heatmap).move_to(pos, res.columns.index(feature))
        elif first and values.size:
            # the first heatmap starts on the first feature's strongest token, not on BOS: the side panel then
            # opens on what that feature picks out here (its DFA by head and by source)
            self.query_one("#heatmap", Heatmap).move_to(first_peak_row(values), 0)
        note = f"cut to the model's {self.engine.info.n_ctx}-token context" if res.truncated else ""
        if not res.columns:
            note = "no feature fires on this prompt"
        self.refresh_status(note)

    # ---- cell -> side panel ---------------------------------------------------------------------------

    @on(CellSelected)
    def cell_selected(self, event: CellSelected) -> None:
        if not self.result or not self.result.columns:
            return
        feature = self.result.columns[event.column]
        self.intervention = None
        self.show_prediction_panel()
        self.run_worker(self._cell(self.result.layer, event.pos, feature), group="cell", exclusive=True)

    async def _cell(self, layer: int, pos: int, feature: int) -> None:
        self.side_pending(f"L{layer} feature {feature} at {pos}")

        def failed(f: Failure) -> None:
            self.side_ready()
            self.query_one("#cell-title", Static).update(Text(f.text, style="red"))

        detail = await self.ask(self.engine.cell(layer, pos, feature), failed)
        if detail is None:
            return
        self.side_ready()
        self.detail = detail
        tokens = self.result.tokens if self.result else []
        tok = visible_token(tokens[pos]) if pos < len(tokens) else "?"
        title = Text(f"L{layer} feature {feature}", style="bold")
        title.append(f"  at {pos} {tok}\n", style="bold")
        title.append(f"act {detail.act:.3f}  pre {detail.pre_act:+.3f}  bias {detail.dfa_bias:+.3f}", style="dim")
        self.query_one("#cell-title", Static).update(title)
        n = len(detail.dfa_heads)
        # one scale per feature: its peak on this prompt, so a cell where it barely fires draws short bars
        peak = self.feature_peak(feature)
        self.query_one("#head-bars", HeadBars).show([head_name(layer, h) for h in range(n)], detail.dfa_heads,
                                                    scale=peak, scale_name="peak act on the prompt")
        self.query_one("#source-strip", SourceStrip).show(tokens, detail.dfa_src, upto=pos)
        self.run_worker(self._summary(layer, feature), group="summary", exclusive=True)

    def feature_peak(self, feature: int) -> float | None:
        """The feature's largest activation on the prompt (from the heatmap), or None when it is not a column."""
        res = self.result
        if res is None or res.values is None or feature not in res.columns:
            return None
        return float(max(row[res.columns.index(feature)] for row in res.values))

    async def _summary(self, layer: int, feature: int) -> None:
        box = self.query_one("#feature-summary", Static)
        def failed(f: Failure) -> None:  # dashboards not built yet is normal
            if not f.bug and self.engine.building_dashboards(layer):
                box.update(Text(f"the layer-{layer} dashboards are being built (job line below); "
                                "the summary appears when they are done", style="dim"))
            else:
                box.update(Text(f.text, style="red" if f.bug else "dim"))
            self.summary = None

        s = await self.ask(self.engine.summary(layer, feature), failed)
        if s is None:
            return
        self.summary = s
        box.update(summary_text(s))

    # ---- what the model predicts, and interventions ---------------------------------------------------

    async def _predictions(self, prompt: str) -> None:
        panel = self.query_one("#predict-panel", PredictPanel)
        p = await self.ask(self.engine.predictions(prompt), lambda f: panel.show_message(f.text, style="red"))
        if p is None:
            return
        self.predictions = p
        if self.intervention is None:
            self.show_prediction_panel()

    def selected_pos(self) -> int:
        hm = self.query_one("#heatmap", Heatmap)
        return hm.selected[0] if hm.selected is not None else 0

    def show_prediction_panel(self) -> None:
        """The model's own next-token top-10 at the selected position (and the per-token loss when asked)."""
        p = self.predictions
        if p is None or self.result is None or p.tokens != self.result.tokens:
            return
        pos = min(self.selected_pos(), len(p.top) - 1)
        self.query_one("#predict-panel", PredictPanel).show_predictions(
            p.tokens, p.top[pos], pos, loss=p.loss if self.show_loss else None)

    def action_toggle_loss(self) -> None:
        self.show_loss = not self.show_loss
        self.intervention = None
        self.show_prediction_panel()

    def action_ablate(self) -> None:
        """Ablate the selected feature at the selected token and show the prediction there before / after."""
        self.start_intervention("ablate", 0.0)

    def action_intervene_form(self) -> None:
        """Ask how to change the selected feature: `2.5` sets it, `x3` scales it; `all` after it acts at every
        position where the feature fires instead of the selected one."""
        cell = self.selected_cell()
        if cell is None:
            self.query_one("#explore-status", StatusLine).error("no cell selected: run a prompt first")
            return
        layer, pos, feature = cell

        def check(text: str) -> str | None:
            try:
                mode, value, where = parse_intervention(text)
            except ValueError as exc:
                return str(exc)
            self.start_intervention(mode, value, where)
            return None

        self.app.push_screen(AskScreen(
            f"L{layer} feature {feature} at token {pos}: new activation (2.5 sets it, x3 scales it, 0 ablates; "
            "add 'all' to act wherever it fires)", value="0", check=check, id="intervene-form"))

    def start_intervention(self, mode: str, value: float, where: str = "cell") -> None:
        cell = self.selected_cell()
        if cell is None:
            self.query_one("#explore-status", StatusLine).error("no cell selected: run a prompt first")
            return
        layer, pos, feature = cell
        self.query_one("#predict-panel", PredictPanel).show_message(f"intervening on L{layer} feature {feature} ...")
        at = pos if where == "cell" else None
        self.run_worker(self._intervene(self.prompt, layer, feature, mode, value, None if where == "all" else pos, at),
                        group="intervene", exclusive=True)

    async def _intervene(self, prompt: str, layer: int, feature: int, mode: str, value: float,
                         pos: int | None, at: int | None) -> None:
        panel = self.query_one("#predict-panel", PredictPanel)
        v = await self.ask(self.engine.intervene(prompt, layer, feature, mode, value, pos=pos, at=at),
                           lambda f: panel.show_message(f.text, style="red"))
        if v is None:
            return
        self.intervention = v
        panel.show_intervention(v)
        self.query_one("#explore-side", VerticalScroll).scroll_home(animate=False)

    def action_pattern(self) -> None:
        """The attention pattern of the head that gives the selected cell most of its DFA (head 0 without one)."""
        if self.result is None or not self.prompt.strip():
            self.query_one("#explore-status", StatusLine).error("run a prompt first")
            return
        head = 0
        if self.detail is not None and self.detail.dfa_heads:
            head = max(range(len(self.detail.dfa_heads)), key=lambda h: abs(self.detail.dfa_heads[h]))
        self.app.push_screen(PatternScreen(self.engine, self.prompt, self.result.layer, head))

    # ---- jump here, prompt history, compare -----------------------------------------------------------

    def go_to(self, prompt: str, layer: int | None = None, pos: int | None = None, feature: int | None = None) -> None:
        """Show `prompt` at `layer` with the cell (pos, feature) selected: where a finding was made."""
        self.prompt = prompt
        self.query_one("#prompt", Input).value = prompt
        if self._typing is not None:
            self._typing.stop()
        self._goto = (pos, feature) if pos is not None and feature is not None else None
        info = self.engine.info
        if layer is not None and (info is None or layer in info.d_sae):
            self.sae_layer = layer
        self.refresh_status()
        self.request_features()
        self.query_one("#heatmap", Heatmap).focus()

    def action_history(self, step: int) -> None:
        """Up / down in the prompt field: the prompts run before (remembered across launches)."""
        box = self.query_one("#prompt", Input)
        if not box.has_focus:
            return
        past = self.wb.prompt_history()
        if not past:
            return
        i = len(past) if self._history_at is None else self._history_at
        i = max(0, min(len(past) - 1, i + step))
        self._history_at = i
        box.value = past[i]
        box.cursor_position = len(box.value)

    def action_compare(self) -> None:
        """Ask for a second prompt (the corrupted one) and show the same features on both, with their difference."""
        if self.result is None or not self.prompt.strip():
            self.query_one("#explore-status", StatusLine).error("run a prompt first")
            return
        from workbench.screens.compare import CompareScreen

        layer, prompt = self.result.layer, self.prompt

        def done(other: str | None) -> None:
            if other:
                self.app.push_screen(CompareScreen(self.engine, prompt, other, layer))

        self.app.push_screen(AskScreen("Compare with this prompt (e.g. the corrupted one):", value=self.prompt,
                                       check=lambda v: None if v.strip() else "type the second prompt",
                                       id="compare-form"), done)

    # ---- actions --------------------------------------------------------------------------------------

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_focus_heatmap(self) -> None:
        hm = self.query_one("#heatmap", Heatmap)
        if hm.has_focus:
            self.wb.action_back()
        else:
            hm.focus()

    def main_widget(self) -> Heatmap:
        return self.query_one("#heatmap", Heatmap)

    def refresh_summary(self) -> None:
        """Ask again for the selected feature's dashboard summary (after a dashboard build)."""
        if self.detail is not None and self.result is not None:
            self.run_worker(self._summary(self.result.layer, self.detail.feature), group="summary", exclusive=True)

    def selected_cell(self) -> tuple[int, int, int] | None:
        """(layer, token position, feature) under the heatmap cursor: what `t` traces."""
        hm = self.query_one("#heatmap", Heatmap)
        if not self.result or hm.selected is None:
            return None
        pos, col = hm.selected
        return self.result.layer, pos, self.result.columns[col]

    def action_layer(self, step: int) -> None:
        info = self.engine.info
        if info is None or not info.sae_layers:
            return
        layers = info.sae_layers
        i = layers.index(self.sae_layer) if self.sae_layer in layers else 0
        self.sae_layer = layers[(i + step) % len(layers)]
        self.set_layer(self.sae_layer)

    def set_layer(self, layer: int) -> None:
        info = self.engine.info
        if info is not None and layer not in info.d_sae:
            self.query_one("#explore-status", StatusLine).error(f"no SAE for layer {layer} (have {info.sae_layers})")
            return
        self.sae_layer = layer
        self.refresh_status()
        if self.prompt.strip():
            self.request_features()

    def action_open_feature(self) -> None:
        cell = self.selected_cell()
        if cell is None:
            self.query_one("#explore-status", StatusLine).error("no feature selected: run a prompt first")
            return
        layer, pos, feature = cell
        self.wb.show_feature(layer, feature, pos=pos)

    def action_trace(self) -> None:
        """Trace the chosen cell (its position and feature) on the feature screen."""
        cell = self.selected_cell()
        if cell is None:
            self.query_one("#explore-status", StatusLine).error("no cell selected: run a prompt first")
            return
        layer, pos, feature = cell
        self.wb.show_feature(layer, feature, pos=pos, trace=True)

    def selected_feature(self) -> tuple[int, int] | None:
        hm = self.query_one("#heatmap", Heatmap)
        if not self.result or hm.selected is None:
            return None
        return self.result.layer, self.result.columns[hm.selected[1]]

    def action_open_saes(self) -> None:
        self.wb.action_open_saes()

    def heatmap_data(self, feature: int) -> dict:
        return _heatmap_data(self.result, feature) if self.result else {}

    def current_finding(self) -> Finding | None:
        if self.intervention is not None:
            return intervention_finding(self.intervention, self.engine.info)
        if not self.result or self.detail is None:
            return None
        d, r = self.detail, self.result
        tokens = r.tokens
        heads = [head_name(r.layer, h) for h in range(len(d.dfa_heads))]
        body = [
            f"Feature {d.feature} at token {d.pos} of the prompt: act {md_number(d.act)}, pre-activation "
            f"{md_number(d.pre_act, signed=True)}.",
            "",
            "Context: " + md_context(tokens, d.pos),
            "",
            f"DFA by head (plus bias {md_number(d.dfa_bias, signed=True)}):",
            "",
            md_bars(heads, d.dfa_heads),
            "",
            "Top source tokens:",
            "",
            md_table(["src", "token", "DFA"], [
                [s, visible_token(tokens[s]), d.dfa_src[s]] for s in sorted(range(len(d.dfa_src)), key=lambda s: -abs(d.dfa_src[s]))[:5]
            ]),
        ]
        info = self.engine.info
        return Finding(
            kind="cell", title=f"L{r.layer} feature {d.feature} on {visible_token(tokens[d.pos])}",
            body="\n".join(body), model=info.model if info else "", saes=info.saes if info else "",
            layer=r.layer, data={"prompt": self.prompt, "pos": d.pos, "feature": d.feature,
                                    "dfa_heads": d.dfa_heads, "dfa_bias": d.dfa_bias, "dfa_src": d.dfa_src,
                                    "heatmap": self.heatmap_data(d.feature)},
        )


def _heatmap_data(result: PromptView, feature: int, max_tokens: int = 64, max_columns: int = 16) -> dict:
    """The prompt's heatmap, small enough to keep in a finding (for its exported figure)."""
    values = result.values if result.values is not None else np.zeros((len(result.tokens), 0))
    cols = list(result.columns[:max_columns])
    return {"tokens": list(result.tokens[:max_tokens]), "columns": cols,
            "values": np.round(np.asarray(values)[:max_tokens, :len(cols)], 4).tolist(),
            "column": cols.index(feature) if feature in cols else None}


def summary_text(s: DashboardView) -> Text:
    """The short dashboard summary: the feature's names with their sources (`DashboardView.words`), density, top
    examples (active token bold), top logits."""
    text = Text()
    if s.words:
        text.append(f"{s.words}\n", style="bold")
    if s.density is not None:
        text.append(f"density {density_text(s.density)}\n", style="dim")
    for ex in s.examples[:3]:
        line = Text("▸ ")
        for i, t in enumerate(ex.tokens):
            line.append(escape_token(t), style="bold reverse" if i == ex.active else "")
        line.append(f"  {ex.act:.2f}", style="dim")
        text.append_text(line)
        text.append("\n")
    if s.top_logits:
        text.append("↑ " + " ".join(visible_token(t) for t, _ in s.top_logits[:6]) + "\n", style="green")
    if s.bottom_logits:
        text.append("↓ " + " ".join(visible_token(t) for t, _ in s.bottom_logits[:6]), style="red")
    return text


def parse_intervention(text: str) -> tuple[str, float, str]:
    """The intervention form's line: `2.5` (set), `x3` or `*3` (scale), `0` (ablate), then optionally `all`.
    Returns (mode, value, where) with where "cell" or "all"; ValueError with a one-line message otherwise."""
    import math

    words = text.strip().lower().split()
    where = "cell"
    if words and words[-1] in ("all", "everywhere"):
        where = "all"
        words = words[:-1]
    if len(words) != 1:
        raise ValueError("type a number (2.5 sets), x3 (scales) or 0 (ablates), optionally followed by 'all'")
    w = words[0]
    mode = "set"
    if w[0] in "x*":
        mode, w = "scale", w[1:]
    try:
        value = float(w)
    except ValueError:
        raise ValueError(f"{words[0]!r} is not a number: type 2.5, x3 or 0") from None
    if not math.isfinite(value):
        raise ValueError("the value must be a finite number")
    if mode == "set" and value == 0:
        mode = "ablate"
    return mode, value, where


def intervention_finding(v: InterventionView, info) -> Finding:
    """A pinned intervention: what was changed, the next-token top-10 before / after, the loss change, the logits
    that moved and the later features that changed (all of it in `data`, the CLI's JSON form)."""
    rows = [[i + 1, b.token, b.prob, a.token, a.prob] for i, (b, a) in enumerate(zip(v.top_before, v.top_after))]
    body = [
        f"{v.describe} at layer {v.layer}; mean next-token loss {v.loss_before:.4f} -> {v.loss_after:.4f} "
        f"({v.loss_after - v.loss_before:+.4f}).",
        "",
        "Prompt: " + md_context(v.tokens, v.at),
        "",
        f"Next token after position {v.at}:",
        "",
        md_table(["#", "before", "p", "after", "p"], rows),
    ]
    if v.logit_change:
        body += ["", "Logits that moved most:", "",
                 md_table(["token", "before", "after"], [[t, b, a] for t, _i, b, a in v.logit_change[:10]])]
    if v.downstream:
        body += ["", "Later features that changed most:", "",
                 md_table(["layer", "feature", "pos", "before", "after"], [list(d) for d in v.downstream[:10]])]
    return Finding(
        kind="intervention", title=f"L{v.layer} {v.describe}"[:80], body="\n".join(body),
        model=info.model if info else "", saes=info.saes if info else "", layer=v.layer,
        data={"prompt": v.prompt, "pos": v.at, "screen": "explore", "intervention": dict(v.data),
              "bars": {"title": f"next token after {v.at}: probability after the edit",
                       "labels": [t.token for t in v.top_after], "values": [t.prob for t in v.top_after]}},
    )


def first_peak_row(values: np.ndarray) -> int:
    """The row (token position) where the first column (feature) is largest: the earliest, on a tie."""
    return int(np.argmax(values[:, 0]))
