"""The home screen: type a prompt, walk its token x feature heatmap, read why the selected feature fired."""

from __future__ import annotations


import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Footer, Input, Static

from workbench.engine import AttnscopeError, CellDetail, DashboardView, PromptView, StaleRequest, one_line
from workbench.findings import Finding, md_bars, md_context, md_table
from workbench.messages import CellSelected
from workbench.screens.base import NavBar, StatusLine, WorkbenchScreen
from workbench.widgets.bars import HeadBars, SourceStrip
from workbench.widgets.heatmap import Heatmap, HeatmapData, escape_token, visible_token

HEATMAP_LEGEND = Text("shade: activation / the feature's peak on this prompt · number: activation · ·: off",
                      style="dim", overflow="ellipsis", no_wrap=False)
TYPING_DELAY_S = 0.25  # wait this long after the last keystroke before asking the engine


class ExploreScreen(WorkbenchScreen):
    MODE = "explore"
    BINDINGS = [
        Binding("enter", "open_feature", "Feature", show=True),
        Binding("t", "trace", "Trace cell", show=True),
        Binding("left_square_bracket", "layer(-1)", "Layer-", show=True),
        Binding("right_square_bracket", "layer(1)", "Layer+", show=True),
        Binding("slash", "focus_prompt", "Prompt", show=True),
        Binding("escape", "focus_heatmap", "Leave the prompt, or back", show=False),
        Binding("s", "open_saes", "SAEs", show=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sae_layer: int | None = None
        self.prompt = ""
        self.result: PromptView | None = None
        self.detail: CellDetail | None = None
        self.summary: DashboardView | None = None
        self._typing: Timer | None = None
        self.waiting_on = ""  # the running job a pending prompt waits on ("" when none)

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield Input(placeholder="Type a prompt, enter to run (the heatmap updates as you type)", id="prompt")
        yield StatusLine("", id="explore-status")
        with Horizontal(id="explore-body"):
            with Vertical(id="heatmap-box"):
                yield Heatmap(id="heatmap")
                yield Static(HEATMAP_LEGEND, id="heatmap-legend")
            with VerticalScroll(id="explore-side"):
                yield Static("", id="cell-title")
                yield HeadBars("DFA by head", id="head-bars")
                yield SourceStrip(id="source-strip")
                yield Static("", id="feature-summary")
        yield Footer()

    def help_about(self) -> str:
        return (
            "Rows are tokens, columns the prompt's strongest features; a cell's shade is its activation relative to "
            "that feature's peak on the prompt. Arrow keys walk the cells; the side panel splits the selected "
            "feature's pre-activation by head and by source token (DFA)."
        )

    # ---- startup --------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        prompt_input = self.query_one("#prompt", Input)
        start = getattr(self.app, "start_prompt", "")
        if start and not self.prompt:
            self.prompt = start
            prompt_input.value = start
        self.query_one("#heatmap", Heatmap).focus()  # keys act at once; / types a prompt
        self.run_worker(self._open(), group="open", exclusive=True)

    async def _open(self) -> None:
        status = self.query_one("#explore-status", StatusLine)
        if self.engine.info is None:
            status.say(f"loading {self.engine.model_spec} and SAEs {self.engine.saes_spec} ...")
        try:
            info = await self.engine.open()
        except Exception as exc:  # noqa: BLE001 - a model that will not load is shown, not raised
            status.error(one_line(exc))  # says itself whether the model or the SAEs failed
            self.notify(one_line(exc), title="Engine", severity="error")
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
        parts = [info.model, f"layer {self.sae_layer}", f"SAE {info.d_sae.get(self.sae_layer, '?')} features"]
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
        self.request_features()
        self.query_one("#heatmap", Heatmap).focus()

    def request_features(self) -> None:
        if self.engine.info is None or self.sae_layer is None:
            return
        self.run_worker(self._features(self.prompt, self.sae_layer), group="features", exclusive=True)

    async def _features(self, prompt: str, layer: int) -> None:
        status = self.query_one("#explore-status", StatusLine)
        running = [h for h in self.engine.worker.jobs() if h.state == "running"]
        if running:  # the engine's one thread is in a job: this prompt is answered at the job's next step
            self.waiting_on = running[0].label
            status.say(f"pending: waiting for a step of {running[0].label} (the heatmap answers between its steps) ...")
        try:
            res = await self.engine.features(prompt, layer)
        except StaleRequest:
            return
        except (AttnscopeError, ValueError) as exc:
            status.error(one_line(exc))
            return
        except Exception as exc:  # noqa: BLE001
            status.error(f"features failed: {one_line(exc)}")
            self.notify(one_line(exc), title="Explore", severity="error")
            return
        finally:
            self.waiting_on = ""
        self.result = res
        self.wb.start_auto_build()  # the first heatmap is drawn: background work may start
        values = res.values if res.values is not None else np.zeros((len(res.tokens), 0))
        self.query_one("#heatmap", Heatmap).set_data(HeatmapData(res.tokens, res.columns, values))
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
        self.run_worker(self._cell(self.result.layer, event.pos, feature), group="cell", exclusive=True)

    async def _cell(self, layer: int, pos: int, feature: int) -> None:
        try:
            detail = await self.engine.cell(layer, pos, feature)
        except StaleRequest:
            return
        except Exception as exc:  # noqa: BLE001
            self.query_one("#cell-title", Static).update(Text(one_line(exc), style="red"))
            return
        self.detail = detail
        tokens = self.result.tokens if self.result else []
        tok = visible_token(tokens[pos]) if pos < len(tokens) else "?"
        title = Text(f"L{layer} feature {feature}", style="bold")
        title.append(f"  at {pos} {tok}\n", style="bold")
        title.append(f"act {detail.act:.3f}  pre {detail.pre_act:+.3f}  bias {detail.dfa_bias:+.3f}", style="dim")
        self.query_one("#cell-title", Static).update(title)
        n = len(detail.dfa_heads)
        self.query_one("#head-bars", HeadBars).show([f"{layer}.{h}" for h in range(n)], detail.dfa_heads)
        self.query_one("#source-strip", SourceStrip).show(tokens, detail.dfa_src, upto=pos)
        self.run_worker(self._summary(layer, feature), group="summary", exclusive=True)

    async def _summary(self, layer: int, feature: int) -> None:
        box = self.query_one("#feature-summary", Static)
        try:
            s = await self.engine.summary(layer, feature)
        except StaleRequest:
            return
        except Exception as exc:  # noqa: BLE001 - dashboards not built yet is normal
            if self.engine.building_dashboards(layer):
                box.update(Text(f"the layer-{layer} dashboards are being built (job line below); "
                                "the summary appears when they are done", style="dim"))
            else:
                box.update(Text(one_line(exc), style="dim"))
            self.summary = None
            return
        self.summary = s
        box.update(summary_text(s))

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
        if not self.result or self.detail is None:
            return None
        d, r = self.detail, self.result
        tokens = r.tokens
        heads = [f"{r.layer}.{h}" for h in range(len(d.dfa_heads))]
        body = [
            f"Feature {d.feature} at token {d.pos} of the prompt: act {d.act:.4g}, pre-activation {d.pre_act:.4g}.",
            "",
            "Context: " + md_context(tokens, d.pos),
            "",
            "DFA by head (plus bias {:+.4g}):".format(d.dfa_bias),
            "",
            md_bars(heads, d.dfa_heads),
            "",
            "Top source tokens:",
            "",
            md_table(["src", "token", "DFA"], [
                [s, tokens[s], d.dfa_src[s]] for s in sorted(range(len(d.dfa_src)), key=lambda s: -abs(d.dfa_src[s]))[:5]
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
    """The short dashboard summary: label (the feature's family), density, top examples (active token bold), top
    logits."""
    text = Text()
    if s.label:
        text.append(f"{s.label}\n", style="bold")
    if s.density is not None:
        text.append(f"density {s.density:.2%}\n", style="dim")
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
