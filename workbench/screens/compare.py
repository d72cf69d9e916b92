"""Compare two prompts: the same features' peak activations on each, side by side, and their difference (clean vs
corrupted). Over the explore screen; p pins it, y copies it, escape closes."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from workbench.screens.base import ask_engine
from workbench.engine.research import CompareView
from workbench.findings import Finding, md_table


def compare_table(v: CompareView) -> Table:
    t = Table(box=None, expand=False, pad_edge=False, header_style="bold")
    t.add_column("feature", justify="right")
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    t.add_column("B - A", justify="right")
    t.add_column("", no_wrap=True)
    peak = max([abs(b - a) for a, b in zip(v.a, v.b)] + [1e-9])
    for f, a, b in zip(v.features, v.a, v.b):
        d = b - a
        bar = "█" * max(0, round(12 * abs(d) / peak))
        t.add_row(str(f), f"{a:.3f}", f"{b:.3f}", Text(f"{d:+.3f}", style="green" if d > 0 else "red" if d < 0 else ""),
                  Text(bar, style="green" if d > 0 else "red"))
    return t


def compare_finding(v: CompareView, info) -> Finding:
    body = [f"A: {v.prompt_a}", "", f"B: {v.prompt_b}", "",
            md_table(["feature", "A", "B", "B - A"], [[f, a, b, b - a] for f, a, b in zip(v.features, v.a, v.b)])]
    return Finding(kind="cell", title=f"L{v.layer} compare two prompts", body="\n".join(body),
                   model=info.model if info else "", saes=info.saes if info else "", layer=v.layer,
                   data={"prompt": v.prompt_a, "prompt_b": v.prompt_b, "screen": "explore", "features": list(v.features),
                         "a": list(v.a), "b": list(v.b),
                         "bars": {"title": "peak activation, B - A", "labels": [f"F{f}" for f in v.features],
                                  "values": [b - a for a, b in zip(v.a, v.b)]}})


class CompareScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,c", "dismiss", "Close"), Binding("p", "pin", "Pin"), Binding("y", "copy", "Copy")]

    def __init__(self, engine, prompt_a: str, prompt_b: str, layer: int) -> None:
        super().__init__()
        self.engine = engine
        self.prompt_a, self.prompt_b, self.c_layer = prompt_a, prompt_b, layer
        self.compare_view: CompareView | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-box", classes="modal-box"):
            title = Text(f"layer {self.c_layer}: peak activation of the strongest features on either prompt\n", style="bold")
            title.append("A: ", style="bold")
            title.append(self.prompt_a + "\n")
            title.append("B: ", style="bold")
            title.append(self.prompt_b)
            yield Static(title)
            with VerticalScroll():
                yield Static("comparing ...", id="compare-table")
            yield Label(Text("p pins · y copies · escape closes", style="dim"))

    def on_mount(self) -> None:
        self.run_worker(self._load(), group="compare", exclusive=True)

    async def _load(self) -> None:
        box = self.query_one("#compare-table", Static)
        v = await ask_engine(self.engine.compare(self.prompt_a, self.prompt_b, self.c_layer),
                             lambda f: box.update(Text(f.text, style="red")), "compare screen", self.log)
        if v is None:
            return
        self.compare_view = v
        box.update(compare_table(v) if v.features else Text("no feature fires on either prompt", style="dim"))

    def current_finding(self) -> Finding | None:
        return compare_finding(self.compare_view, self.engine.info) if self.compare_view else None

    def action_pin(self) -> None:
        f = self.current_finding()
        if f is not None:
            self.app.findings.add(f)  # type: ignore[attr-defined]
            self.app.notify("pinned the comparison", title="Pinned")

    def action_copy(self) -> None:
        f = self.current_finding()
        if f is not None:
            text = f"{f.title}\n\n{f.body}\n"
            self.app.copy_to_clipboard(text)
            self.app.copied = text  # type: ignore[attr-defined]
            self.app.notify("copied the comparison (OSC 52)", title="Copy")

    def action_dismiss(self) -> None:
        self.dismiss(None)
