"""Small modal screens: help, a one-line question (pin note, a path, a feature id), and their inline errors, and a
yes/no question before anything is replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from workbench.engine import plain
from workbench.widgets.edit import UndoInput


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
            # the cursor at the end, nothing selected: the first key edits a note or path, never replaces it; ctrl+z
            # undoes, ctrl+y redoes
            yield UndoInput(value=self.value, placeholder=self.placeholder, id="ask-input")
            yield Static("", id="ask-error", classes="inline-error")  # wraps: a long error is never cut mid-word
            yield Label(Text("enter accepts · escape cancels", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#ask-input", Input).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#ask-error", Static).update(plain(message))

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


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before something is replaced or started over: y answers yes; n or escape answers no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "yes", no: str = "no") -> None:
        super().__init__()
        self.question = question
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box ask-box"):
            yield Static(Text(self.question, style="bold"), classes="ask-question")
            yield Label(Text(f"y {self.yes} · n or escape {self.no}", style="dim"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def ask_export(app: Any, question: str, value: str, write: Callable[[str], Path], what: str, error: str = "",
               screen_id: str | None = None) -> None:
    """Ask where to export; a path whose report or figures folder exists is replaced only after a yes
    (`ConfirmScreen`), and the notice then says "replaced". `write(path)` writes and returns the path written, or
    raises an `AttnscopeError` such as `ExportError` (shown inline, the path kept)."""
    from workbench.engine import AttnscopeError
    from workbench.figures import export_would_replace

    pending: dict[str, Any] = {}

    def check(path: str) -> str | None:
        path = path.strip()
        if not path:
            return "give a file name"
        replaced = export_would_replace(path)
        if replaced:
            pending.update(path=path, replaced=replaced)
            return None
        try:
            written = write(path)
        except AttnscopeError as exc:  # ExportError, an unsafe path, damaged figure data, ...
            return str(exc)
        app.notify(f"{what} written to {written}", title="Export")
        return None

    def confirmed(yes: bool | None) -> None:
        path = pending["path"]
        if not yes:
            ask_export(app, question, path, write, what, error="not replaced; give another name, or enter and y to replace",
                       screen_id=screen_id)
            return
        try:
            written = write(path)
        except AttnscopeError as exc:  # ExportError, an unsafe path, damaged figure data, ...
            ask_export(app, question, path, write, what, error=str(exc), screen_id=screen_id)
            return
        app.notify(f"{what} written to {written} (replaced {' and '.join(pending['replaced'])})", title="Export")

    def done(path: str | None) -> None:
        if path is None or "path" not in pending:
            return
        listing = " and ".join(pending["replaced"])
        app.push_screen(ConfirmScreen(f"{listing} already exist{'s' if len(pending['replaced']) == 1 else ''}. "
                                      "Replace?", yes="replaces", no="keeps it and asks for another name"), confirmed)

    ask = AskScreen(question, value=value, check=check, id=screen_id)
    app.push_screen(ask, done)
    if error:
        app.call_after_refresh(ask.show_error, error)
