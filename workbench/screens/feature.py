"""One feature's full dashboard, and its recursive DFA trace as a tree (`t`)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static, Tree

from workbench.widgets.footer import WorkbenchFooter
from workbench.widgets.jobbar import progress_counts
from workbench.engine import (
    DashboardView, EngineInfo, ProxyView, TraceNodeView, TraceView, density_text, head_name,
)
from workbench.findings import Finding, md_bars, md_context, md_table
from workbench.messages import JobCancelled, JobFailed, JobFinished, JobMessage, JobProgress
from workbench.screens.base import Failure, NavBar, StatusLine, WorkbenchScreen
from workbench.screens.modals import AskScreen
from workbench.widgets.bars import FitBars, source_strip
from workbench.widgets.heatmap import escape_token, visible_token
from workbench.widgets.sparklines import histogram_text


def context_text(tokens: list[str], active: int) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    for i, t in enumerate(tokens):
        line.append(escape_token(t), style="bold reverse" if i == active else "")
    return line


def dashboard_renderable(d: DashboardView) -> Group:
    """Draw a dashboard view (see `Engine.dashboard`) as rich renderables."""
    parts: list[Any] = []
    head = Text(f"L{d.layer} feature {d.feature}", style="bold")
    if d.density is not None:
        head.append(f"   density {density_text(d.density)}", style="dim")
    if d.max_act is not None:
        head.append(f"   max act {d.max_act:.3f}", style="dim")
    if d.words:
        head.append(f"\n{d.words}", style="italic")
    parts.append(head)
    if d.head_shares:
        parts.append(Text("\nHead shares of the decoder norm", style="bold"))
        parts.append(FitBars([head_name(d.layer, h) for h in range(len(d.head_shares))], d.head_shares))
    if d.histogram:
        parts.append(Text("\nActivation histogram", style="bold"))
        parts.append(histogram_text(d.histogram.counts, d.histogram.edges))
    if d.examples:
        parts.append(Text("\nTop examples", style="bold"))
        t = Table(box=None, show_header=False, expand=True, pad_edge=False)
        t.add_column("act", width=7, justify="right", style="dim")
        t.add_column("context", ratio=1, no_wrap=True)
        for ex in d.examples:
            t.add_row(f"{ex.act:.2f}", context_text(ex.tokens, ex.active))
        parts.append(t)
    if d.quantiles:
        parts.append(Text("\nActivation bands: random firings from each band of activation values (share of all "
                          "firings); the top band's examples sit below the top examples above, which are the "
                          "largest firings overall, hence the gap.", style="dim"))
    for q in d.quantiles:
        parts.append(Text(f"\nBand {q.range}", style="bold"))
        for ex in q.examples[:3]:
            line = Text(f"{ex.act:6.2f} ", style="dim")
            line.append_text(context_text(ex.tokens, ex.active))
            parts.append(line)
    if d.top_logits or d.bottom_logits:
        parts.append(Text("\nLogit effects", style="bold"))
        t = Table(box=None, expand=True, pad_edge=False)
        t.add_column("promoted", style="green")
        t.add_column("", justify="right", style="dim")
        t.add_column("suppressed", style="red")
        t.add_column("", justify="right", style="dim")
        tops, bots = d.top_logits, d.bottom_logits
        for i in range(max(len(tops), len(bots))):
            a = tops[i] if i < len(tops) else ("", None)
            b = bots[i] if i < len(bots) else ("", None)
            t.add_row(visible_token(a[0]) if a[1] is not None else "", f"{a[1]:+.2f}" if a[1] is not None else "",
                      visible_token(b[0]) if b[1] is not None else "", f"{b[1]:+.2f}" if b[1] is not None else "")
        parts.append(t)
    if d.top_dfa_src:
        s = d.top_dfa_src
        parts.append(Text("\nDFA by source of the top example", style="bold"))
        parts.append(source_strip(s.tokens, s.values, upto=s.active))
    if d.note:
        parts.append(Text("\n" + d.note, style="dim"))
    return Group(*parts)


PROXY_HELP = ("Proxy (where the feature should fire): induction:TOKEN (TOKEN is next by induction, the paper's), "
              "token:TOKEN, or regex:PATTERN over the text up to the token")


def proxy_renderable(v: ProxyView, width: int = 24) -> Group:
    """The proxy panel: the summary, a histogram of firings split by proxy true (green) / false (red) with the
    paper's expected values, and examples of false positives and negatives."""
    top = max([max(t, f) for _, t, f, _, _ in v.bins] or [1]) or 1
    hist = Text()
    for rng, t, f, et, ef in v.bins:
        hist.append(f"{rng:>15} ")
        hist.append("█" * round(width * t / top), style="green")
        hist.append(f" {t}", style="green")
        hist.append("  ")
        hist.append("█" * round(width * f / top), style="red")
        hist.append(f" {f}", style="red")
        hist.append(f"   EV {et:.3f} / {ef:.3f}\n", style="dim")
    parts: list[Any] = [Text(v.summary, style="bold"), Text(v.rule, style="dim"), Text(""),
                        Text("activation where it fires: proxy true (green) / false (red); EV = bin centre x count / "
                             "the category's firings", style="dim"), hist]
    for title, examples in (("false positives (fires, proxy false)", v.false_positives),
                            ("false negatives (proxy true, silent)", v.false_negatives)):
        parts.append(Text(title, style="bold"))
        for ex in examples:
            line = Text(f"{ex.act:7.3f}  ")
            line.append_text(context_text(ex.tokens, ex.active))
            parts.append(line)
        if not examples:
            parts.append(Text("none", style="dim"))
    return Group(*parts)


def trace_root_label(tr: TraceView) -> Text:
    """The trace root: the pre-activation the tree splits and the activation, so a position where the feature does
    not fire (act 0, e.g. outside the top-k) never looks traced like one where it does."""
    label = Text()
    if tr.act is not None and tr.act <= 0:  # first: a narrow tree cuts the end of the line, never this
        label.append("does not fire here: ", style="bold yellow")
    label.append(f"{tr.root.label}  pre {tr.root.value:+.3f}", style="bold")
    if tr.act is not None:
        label.append(f" · act {tr.act:.3f}", style="bold" if tr.act > 0 else "bold yellow")
    return label


class FeatureScreen(WorkbenchScreen):
    MODE = "feature"
    BINDINGS = [
        Binding("g", "goto", "Go to", show=True),
        Binding("left_square_bracket", "step(-1)", "Prev", show=True),
        Binding("right_square_bracket", "step(1)", "Next", show=True),
        Binding("t", "trace", "Trace", show=True),
        Binding("comma", "trace_pos(-1)", "Pos-", show=True),
        Binding("full_stop", "trace_pos(1)", "Pos+", show=True),
        Binding("b", "build", "Build", show=True),
        Binding("y", "proxy", "Proxy", show=True),
        Binding("a", "trace_all", "Trace: every term / the top", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sae_layer: int | None = None
        self.feature: int | None = None
        self.view: DashboardView | None = None
        self.trace: TraceView | None = None
        self.job: Any = None
        self.trace_pos: int | None = None  # the explore prompt's token to trace at (None: where it is strongest)
        self.proxy: ProxyView | None = None  # the last proxy study of this feature (y)
        self.proxy_job: Any = None
        self.trace_job: Any = None  # the trace's job while it runs
        self.trace_args: tuple = ()  # what it traces: (prompt, layer, feature, position)
        self.trace_all = False  # a: the trace tree shows every term, not only those >= 5% of the root
        self.tracing = ""  # while a trace runs: what the status line says about it (nothing may overwrite it)
        self._trace_on_mount = False

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield StatusLine("choose a feature: enter on the explore heatmap, g here, or ctrl+p", id="feature-status")
        with Horizontal(id="feature-body"):
            with VerticalScroll(id="dashboard-scroll"):
                yield Static("", id="dashboard")
            yield Tree("trace", id="trace-tree", classes="hidden")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return "The dashboard of one feature, built by `attnscope dashboards build`. t traces it on the explore prompt."

    def on_resize(self) -> None:
        """Below 120 columns the trace takes most of the width: its labels are what is read."""
        self.query_one("#trace-tree", Tree).styles.width = "50%" if self.size.width >= 120 else "75%"

    def on_mount(self) -> None:
        if self.feature is not None and self.sae_layer is not None:  # asked for before the screen was built
            self.load(self.sae_layer, self.feature, pos=self.trace_pos)
            if self._trace_on_mount:
                self._trace_on_mount = False
                self.action_trace()
        elif self.sae_layer is None and self.engine.info is not None and self.engine.info.sae_layers:
            self.sae_layer = self.engine.info.sae_layers[0]

    def load(self, layer: int, feature: int, pos: int | None = None) -> None:
        """Show a feature's dashboard; `pos` is the explore-prompt token that `t` traces at (None: where this
        feature is strongest; never a position kept from the feature shown before)."""
        self.sae_layer, self.feature = layer, feature
        self.trace_pos = pos
        self.trace = None
        self.proxy = None
        if self.trace_job is not None and self.trace_job.running:  # another feature: its trace is not wanted
            self.trace_job.cancel()
            self.trace_job, self.tracing = None, ""
        if not self.query("#trace-tree"):
            return  # on_mount loads it
        self.query_one("#trace-tree", Tree).add_class("hidden")
        self.run_worker(self._load(layer, feature), group="dashboard", exclusive=True)

    async def _load(self, layer: int, feature: int) -> None:
        status = self.query_one("#feature-status", StatusLine)
        status.say(f"L{layer} feature {feature}: loading ...")
        view = await self.ask(self.engine.dashboard(layer, feature), lambda f: status.error(f.text))
        if view is None:  # stale, or an unknown id / a bug: shown inline
            return
        self.view = view
        self.say(self.dashboard_status())
        self.query_one("#dashboard", Static).update(dashboard_renderable(view))
        self.query_one("#dashboard-scroll", VerticalScroll).scroll_home(animate=False)  # a new page starts at its top

    def dashboard_status(self) -> str:
        view = self.view
        if view is None:
            return ""
        layer, feature = view.layer, view.feature
        if view.built:
            return f"L{layer} feature {feature}"
        if self.engine.building_dashboards(layer):
            return f"L{layer} feature {feature} · dashboards being built (job line below); the page fills in when done"
        return f"L{layer} feature {feature} · dashboards not built (b builds)"

    def say(self, message: str) -> None:
        """The status line; while a trace runs it keeps saying so after `message`."""
        status = self.query_one("#feature-status", StatusLine)
        status.say(f"{message} · {self.tracing}" if self.tracing and message else message or self.tracing)

    # ---- actions --------------------------------------------------------------------------------------

    def check_feature_id(self, text: str) -> str | None:
        info = self.engine.info
        try:
            fid = int(text.strip())
        except ValueError:
            return f"{text!r} is not a feature id (a whole number)"
        layer = self.sae_layer if self.sae_layer is not None else (info.sae_layers[0] if info and info.sae_layers else None)
        if info is None or layer is None:
            return "the model is not open yet"
        d_sae = info.d_sae.get(layer, 0)
        if not 0 <= fid < d_sae:
            return f"feature {fid} is outside the layer-{layer} SAE (ids 0..{d_sae - 1})"
        return None

    def action_goto(self) -> None:
        def done(value: str | None) -> None:
            if value is not None:
                info = self.engine.info
                layer = self.sae_layer if self.sae_layer is not None else info.sae_layers[0]
                self.load(layer, int(value.strip()))

        self.app.push_screen(AskScreen("Feature id:", check=self.check_feature_id), done)

    def action_step(self, delta: int) -> None:
        info = self.engine.info
        if self.sae_layer is None or self.feature is None or info is None:
            return
        self.load(self.sae_layer, (self.feature + delta) % info.d_sae[self.sae_layer])

    def back(self) -> bool:
        if self.proxy is not None and self.view is not None:
            self.proxy = None
            self.query_one("#dashboard", Static).update(dashboard_renderable(self.view))
            return True
        tree = self.query("#trace-tree")
        if tree and not tree.first().has_class("hidden"):
            tree.first().add_class("hidden")
            self.trace = None
            self.say(self.dashboard_status())  # not the closed trace's line
            return True
        return False

    def action_trace_pos(self, step: int) -> None:
        """Move the traced position one token left or right on the explore prompt, and trace again."""
        status = self.query_one("#feature-status", StatusLine)
        base = self.trace.pos if self.trace is not None else self.trace_pos
        if base is None:
            status.error("trace first (t), then , and . move the traced token")
            return
        n = len(self.trace.tokens) if self.trace is not None else None
        new = base + step
        if new < 0 or (n is not None and new >= n):  # at an end: stay put and say so, in the user's terms
            status.say(f"already at the {'first' if new < 0 else 'last'} token (position {base})")
            return
        self.trace_pos = new
        self.action_trace()

    def action_trace(self) -> None:
        if not self.query("#feature-status"):
            self._trace_on_mount = True
            return
        status = self.query_one("#feature-status", StatusLine)
        prompt = self.wb.explore_prompt()
        if self.sae_layer is None or self.feature is None:
            status.error("no feature to trace: choose one first")
            return
        if not prompt.strip():
            status.error("the trace runs on the explore prompt, which is empty: type one on screen 1")
            return
        self.run_worker(self._trace(prompt, self.sae_layer, self.feature, self.trace_pos), group="trace", exclusive=True)

    async def _trace(self, prompt: str, layer: int, feature: int, pos: int | None) -> None:
        """From memory when this trace was drawn before (instant), else as a job (job line; ctrl+x cancels); a
        newer trace replaces one still running."""
        status = self.query_one("#feature-status", StatusLine)
        self.tracing = f"tracing L{layer} F{feature}" + ("" if pos is None else f" at position {pos}") + " ..."
        status.say(self.tracing)

        def failed(f: Failure) -> None:
            self.tracing = ""
            status.error(f.text)

        failures: list[Failure] = []
        tr = await self.ask(self.engine.trace_cached(prompt, layer, feature, pos=pos, depth=1), failures.append)
        if failures:
            failed(failures[0])
            return
        if tr is not None:
            self.show_trace(tr)
            return
        args = (prompt, layer, feature, pos)
        if self.trace_job is not None and self.trace_job.running:
            if self.trace_args == args:  # t pressed again while it runs: the same job goes on
                return
            self.trace_job.cancel()  # the position moved on: the old tree is not wanted any more
        self.trace_args = args
        job = self.attempt(self.engine.run_trace, prompt, layer, feature, post=self.post_message, pos=pos, depth=1,
                           on_error=failed)
        if job is not None:
            self.trace_job = job
            self.tracing = self.tracing.removesuffix(" ...") + " (job line below; ctrl+x cancels)"
            status.say(self.tracing)

    def show_trace(self, tr: TraceView) -> None:
        self.tracing = ""
        self.trace = tr
        self.draw_trace(tr)
        self.query_one("#trace-tree", Tree).focus()

    def _is_trace(self, m: JobMessage) -> bool:
        return m.kind == "trace" and self.trace_job is not None and m.job_id == self.trace_job.id

    def draw_trace(self, tr: TraceView) -> None:
        """The tree: terms of at least 5% of the root's |value| (their siblings summed in one line), or, after a,
        every term."""
        tree = self.query_one("#trace-tree", Tree)
        tree.clear()
        tree.root.set_label(trace_root_label(tr))
        floor = 0.0 if self.trace_all else abs(tr.root.value) * TRACE_EXPORT_SHARE

        def add(parent: Any, node: TraceNodeView) -> None:
            rest = [c for c in node.children if abs(c.value) < floor]
            for c in node.children:
                if abs(c.value) < floor:
                    continue
                label = Text(f"{c.value:+.3f} ", style="green" if c.value > 0 else "red")
                label.append(escape_token(c.label))
                child = parent.add(label, data=c, expand=c.kind != "other")
                add(child, c)
                if not c.children:
                    child.allow_expand = False
            if rest:
                total = sum(c.value for c in rest)
                label = Text(f"{total:+.3f} ", style="dim")
                label.append(f"({len(rest)} smaller, each <{TRACE_EXPORT_SHARE:.0%}; a: all)", style="dim")
                parent.add_leaf(label)

        add(tree.root, tr.root)
        tree.root.expand()
        tree.remove_class("hidden")
        tok = visible_token(tr.tokens[tr.pos]) if tr.pos < len(tr.tokens) else "?"
        fires = "" if tr.act is None or tr.act > 0 else " · it does not fire here (act 0)"
        shown = "every term" if self.trace_all else f"terms >= {TRACE_EXPORT_SHARE:.0%} of the root (a: all)"
        self.say(f"trace of L{tr.layer} F{tr.feature} at {tr.pos} {tok}{fires} · {shown} · , . move it · "
                 "children sum to parents")

    def action_trace_all(self) -> None:
        self.trace_all = not self.trace_all
        if self.trace is not None:
            self.draw_trace(self.trace)
        else:
            self.say("every term of the next trace" if self.trace_all else "the top terms of the next trace")

    def trace_root_text(self) -> Text:
        """The trace tree's root line as shown."""
        return self.query_one("#trace-tree", Tree).root.label

    def action_build(self) -> None:
        if self.sae_layer is None:
            return
        status = self.query_one("#feature-status", StatusLine)
        job = self.attempt(self.engine.build_dashboards, self.sae_layer, post=self.post_message,
                           on_error=lambda f: status.error(f.text))  # e.g. the same build already runs or waits
        if job is None:
            return
        self.job = job
        jobs = self.engine.worker.jobs()
        if jobs and jobs[0].id != self.job.id:
            status.say(f"layer-{self.sae_layer} dashboards wait behind {jobs[0].label} (ctrl+x cancels that)")
        else:
            status.say(f"building layer-{self.sae_layer} dashboards ... (ctrl+x cancels; it resumes later)")

    def on_job_progress(self, m: JobProgress) -> None:
        if self._is_trace(m):
            p = m.progress
            done = progress_counts(p)
            self.tracing = f"{p.stage or self.trace_job.label}{done} (ctrl+x cancels)"
            self.query_one("#feature-status", StatusLine).say(self.tracing)
        if m.kind == "dashboards" and self.job is not None and m.job_id == self.job.id:
            p = m.progress
            status = f"building dashboards of {p.stage}" if p.stage else "building dashboards"
            if p.total > 0:
                status += f" {p.done / 1e3:,.0f}k/{p.total / 1e3:,.0f}k {p.unit} ({p.fraction:.0%})"
            self.say(status)

    def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._is_trace(m):
            self.trace_job, self.tracing = None, ""
            self.query_one("#feature-status", StatusLine).say("trace cancelled; t traces again")

    def on_job_failed(self, m: JobFailed) -> None:
        if self._is_trace(m):
            self.trace_job, self.tracing = None, ""
        if m.kind in ("dashboards", "proxy", "trace"):
            self.query_one("#feature-status", StatusLine).error(m.error)

    def action_proxy(self) -> None:
        """Ask for a proxy rule and run the specificity / sensitivity study of this feature on held-out text."""
        status = self.query_one("#feature-status", StatusLine)
        if self.sae_layer is None or self.feature is None:
            status.error("no feature: choose one first")
            return

        def check(value: str) -> str | None:
            kind, sep, arg = value.partition(":")
            if not sep or kind.strip() not in ("induction", "token", "regex") or not arg:
                return "write KIND:ARG, e.g. induction: board, token: the, regex:[0-9]+"
            return None

        def done(value: str | None) -> None:
            if value is None or self.sae_layer is None or self.feature is None:
                return
            job = self.attempt(self.engine.run_proxy, self.sae_layer, self.feature, value.strip(),
                               post=self.post_message)
            if job is None:  # e.g. one already running: attempt showed why
                return
            self.proxy_job = job
            status.say(f"proxy {value.strip()} on held-out text ... (ctrl+x cancels)")

        self.app.push_screen(AskScreen(PROXY_HELP, placeholder="induction: board", check=check), done)

    def on_job_finished(self, m: JobFinished) -> None:
        if self._is_trace(m):
            self.trace_job = None
            tr: TraceView = m.result
            if (tr.layer, tr.feature) == (self.sae_layer, self.feature):  # not a feature left meanwhile
                self.show_trace(tr)
            else:
                self.tracing = ""
            return
        if m.kind != "proxy" or self.proxy_job is None or m.job_id != self.proxy_job.id:
            return
        view: ProxyView = m.result
        if (view.layer, view.feature) != (self.sae_layer, self.feature):
            return
        self.proxy = view
        self.query_one("#dashboard", Static).update(proxy_renderable(view))
        self.query_one("#feature-status", StatusLine).say(view.summary + " · escape: back to the dashboard")

    def current_finding(self) -> Finding | None:
        if self.proxy is not None:
            v = self.proxy
            rows = [[r, t, f, f"{et:.4f}", f"{ef:.4f}"] for r, t, f, et, ef in v.bins]
            body = "\n".join([v.summary, "", v.rule, "", md_table(["activation", "proxy true", "proxy false", "EV true",
                                                                  "EV false"], rows)]
                             + ["", "False positives:", ""] + [f"- {ex.act:.3f}: " + md_context(ex.tokens, ex.active)
                                                                for ex in v.false_positives]
                             + ["", "False negatives:", ""] + ["- " + md_context(ex.tokens, ex.active)
                                                                for ex in v.false_negatives])
            info = self.engine.info
            return Finding(kind="proxy", title=f"L{v.layer} F{v.feature} against {v.proxy}", body=body,
                           model=info.model if info else "", layer=v.layer, data=dict(v.data))
        if self.trace is not None and not self.query_one("#trace-tree", Tree).has_class("hidden"):
            return trace_finding(self.trace, self.engine.info, self.wb.explore_prompt())
        if self.view is None:
            return None
        d = self.view
        body = [d.words, ""] if d.words else []
        if d.examples:
            body += ["Top examples:", ""] + [f"- {ex.act:.3f}: " + md_context(ex.tokens, ex.active)
                                             for ex in d.examples[:8]] + [""]
        if d.top_logits:
            body += ["Logit effects:", "", md_table(["promoted", "", "suppressed", ""], [
                [visible_token(a[0]), a[1], visible_token(b[0]), b[1]] for a, b in zip(d.top_logits, d.bottom_logits)
            ]), ""]
        if d.head_shares:
            body += ["Head shares of the decoder norm:", "", md_bars([head_name(d.layer, h) for h in range(len(d.head_shares))], d.head_shares)]
        info = self.engine.info
        name = d.human_label or d.role
        words = {"human_label": d.human_label, "role": d.role, "paper_family": d.paper_family}
        return Finding(kind="feature", title=f"L{d.layer} feature {d.feature}" + (f": {name}" if name else ""),
                       body="\n".join(body), model=info.model if info else "", saes=info.saes if info else "",
                       layer=d.layer, data={"feature": d.feature, **{k: v for k, v in words.items() if v},
                                            "head_shares": list(d.head_shares)})


TRACE_EXPORT_DEPTH = 2  # levels below the root written into an exported trace
TRACE_EXPORT_SHARE = 0.05  # children smaller than this share of the root's |value| are summed into one line


def trace_lines(root: TraceNodeView, depth: int = TRACE_EXPORT_DEPTH, share: float = TRACE_EXPORT_SHARE) -> list[str]:
    """The top of a trace tree as indented lines: `depth` levels, and only nodes whose |value| is at least
    `share` of the root's; the rest of each node's children are summed into one 'smaller terms' line."""
    floor = abs(root.value) * share
    lines: list[str] = []

    def walk(node: TraceNodeView, level: int) -> None:
        lines.append(f"{'  ' * level}{node.value:+.4f}  {escape_token(node.label)}")
        if level >= depth:
            return
        big = [c for c in node.children if abs(c.value) >= floor]
        rest = [c for c in node.children if abs(c.value) < floor]
        for c in big:
            walk(c, level + 1)
        if rest:
            lines.append(f"{'  ' * (level + 1)}{sum(c.value for c in rest):+.4f}  "
                         f"({len(rest)} smaller terms, each under {share:.0%} of the root)")

    walk(root, 0)
    return lines


def trace_finding(tr: TraceView, info: EngineInfo | None, prompt: str = "") -> Finding:
    lines = [f"Recursive DFA of L{tr.layer} feature {tr.feature} at position {tr.pos} "
             f"({visible_token(tr.tokens[tr.pos]) if tr.pos < len(tr.tokens) else '?'}).", ""]
    if prompt:
        lines += ["Prompt:", "", "```text", prompt, "```", ""]
    lines += [f"Top of the tree ({TRACE_EXPORT_DEPTH} levels, terms of at least {TRACE_EXPORT_SHARE:.0%} of the "
              "root; children sum to their parent):", "", "```text"]
    lines += trace_lines(tr.root)
    lines += ["```", "", f"*{tr.approximation}*"]
    top = sorted(tr.root.children, key=lambda c: -abs(c.value))[:12]
    return Finding(kind="trace", title=f"trace of L{tr.layer} F{tr.feature} at {tr.pos}", body="\n".join(lines),
                   model=info.model if info else "", saes=info.saes if info else "", layer=tr.layer,
                   data={"prompt": prompt, "pos": tr.pos, "feature": tr.feature,
                         "bars": {"title": "trace: first level", "labels": [c.label[:24] for c in top],
                                  "values": [c.value for c in top]}})
