"""Small modal screens: help, a one-line question (pin note, a path, a feature id), and their inline errors."""

from __future__ import annotations

from typing import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from workbench.engine import plain


class HelpScreen(ModalScreen[None]):
    """Every key of the screen underneath and of the app, in one table."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, title: str, rows: list[tuple[str, str]], about: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.rows = rows
        self.about = about

    def compose(self) -> ComposeResult:
        table = Table(show_header=True, header_style="bold", box=None, expand=True, pad_edge=False)
        table.add_column("key", style="bold dark_orange", no_wrap=True, width=12)
        table.add_column("action")
        for key, desc in self.rows:
            table.add_row(key, desc)
        with Vertical(id="help-box", classes="modal-box"):
            yield Label(Text(f"Keys: {self.title_text}", style="bold"))
            if self.about:
                yield Static(Text(self.about, style="dim"))
            with VerticalScroll():
                yield Static(table, id="help-table")
            yield Label(Text("escape closes · ctrl+p opens the command palette", style="dim"))

    def action_dismiss(self) -> None:
        self.dismiss(None)


class AskScreen(ModalScreen[str | None]):
    """One line of input. `check(value)` returns an error to show inline (the text stays), or None to accept."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        question: str,
        value: str = "",
        placeholder: str = "",
        check: Callable[[str], str | None] | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.question = question
        self.value = value
        self.placeholder = placeholder
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box ask-box"):
            yield Static(plain(self.question, style="bold"), classes="ask-question")  # wraps; a Label would cut it
            yield Input(value=self.value, placeholder=self.placeholder, id="ask-input")
            yield Label("", id="ask-error", classes="inline-error")
            yield Label(Text("enter accepts · escape cancels", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#ask-input", Input).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#ask-error", Label).update(plain(message, one_line=True))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value
        if self.check is not None:
            error = self.check(value)
            if error:
                self.show_error(error)
                return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
