"""One head's attention pattern on the prompt (query x key), over the screen that opened it; [ ] change head,
{ } change layer, escape closes."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from workbench.engine import head_name
from workbench.screens.base import ask_engine
from workbench.widgets.predict import pattern_text


class PatternScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,v", "dismiss", "Close"),
        Binding("left_square_bracket", "head(-1)", "Head-"),
        Binding("right_square_bracket", "head(1)", "Head+"),
        Binding("left_curly_bracket", "layer(-1)", "Layer-"),
        Binding("right_curly_bracket", "layer(1)", "Layer+"),
    ]

    def __init__(self, engine, prompt: str, layer: int, head: int) -> None:
        super().__init__()
        self.engine = engine
        self.prompt = prompt
        self.p_layer = layer
        self.p_head = head
        self.pattern_view = None

    def compose(self) -> ComposeResult:
        with Vertical(id="pattern-box", classes="modal-box"):
            yield Label("", id="pattern-title")
            with VerticalScroll():
                yield Static("", id="pattern-grid")
            yield Label(Text("[ ] head · { } layer · escape closes", style="dim"))

    def on_mount(self) -> None:
        self.load()

    def load(self) -> None:
        self.query_one("#pattern-title", Label).update(
            Text(f"attention pattern of head {head_name(self.p_layer, self.p_head)} (rows: query, columns: key)",
                 style="bold"))
        self.run_worker(self._load(), group="pattern", exclusive=True)

    async def _load(self) -> None:
        grid = self.query_one("#pattern-grid", Static)
        v = await ask_engine(self.engine.pattern(self.prompt, self.p_layer, self.p_head),
                             lambda f: grid.update(Text(f.text, style="red")), "pattern screen", self.log)
        if v is None:
            return
        self.pattern_view = v
        grid.update(pattern_text(v.tokens, v.values))

    def action_head(self, step: int) -> None:
        info = self.engine.info
        n = info.n_heads if info else 1
        self.p_head = (self.p_head + step) % n
        self.load()

    def action_layer(self, step: int) -> None:
        info = self.engine.info
        n = info.n_layers if info else 1
        self.p_layer = (self.p_layer + step) % n
        self.load()

    def action_dismiss(self) -> None:
        self.dismiss(None)
