"""What every workbench screen shares: the navigation line, a status line for inline messages, and pinning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

if TYPE_CHECKING:
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.findings import Finding

# (mode name, key, label): the order of the navigation line and of the number keys
SCREENS: list[tuple[str, str, str]] = [
    ("explore", "1", "Explore"),
    ("feature", "2", "Feature"),
    ("heads", "3", "Heads"),
    ("induction", "4", "Induction"),
    ("ioi", "5", "IOI"),
    ("training", "6", "Training"),
    ("findings", "7", "Findings"),
]


def nav_text(current: str) -> Text:
    text = Text(" attnscope ", style="bold reverse")
    for mode, key, label in SCREENS:
        text.append(" ")
        style = "bold reverse" if mode == current else ""
        text.append(f"{key}", style=(style + " underline").strip())
        text.append(f" {label}", style=style)
    return text


class NavBar(Static):
    DEFAULT_CSS = "NavBar { dock: top; height: 1; }"

    def __init__(self, current: str) -> None:
        super().__init__(nav_text(current))


class StatusLine(Static):
    """One line under a screen's controls: progress notes in dim, bad input in red (the input itself stays)."""

    DEFAULT_CSS = "StatusLine { height: 1; }"

    def __init__(self, text: str = "", **kwargs: Any) -> None:
        super().__init__(text, **kwargs)
        self.message = text
        self.is_error = False

    def say(self, message: str) -> None:
        self.message, self.is_error = message, False
        self.update(Text(message, style="dim"))

    def error(self, message: str) -> None:
        self.message, self.is_error = message, True
        self.update(Text(message, style="bold red"))


class WorkbenchScreen(Screen):
    """A screen that knows the app's engine and can pin what it shows."""

    MODE = ""
    # the app's help key, first in every screen's footer (a screen's own keys come after it): at 80 columns the
    # footer cuts its last keys, and ? must never be one of them. Same key, same action as the app's binding.
    BINDINGS = [Binding("question_mark", "app.help", "Help", show=True)]

    def on_mount(self) -> None:
        """Let the app find this screen in any mode (see `WorkbenchApp.screens_of`), and put the global job
        indicator above the footer; subclasses' `on_mount` run too."""
        from textual.widgets import Footer

        from workbench.widgets.jobbar import JobBar

        register = getattr(self.app, "mode_screens", None)
        if register is not None and self.MODE:
            register[self.MODE] = self
        for footer in self.query(Footer):
            footer.compact = True  # more keys fit at 80 columns
        if not self.query(JobBar):
            footers = self.query(Footer)
            self.mount(JobBar(), before=footers.first() if footers else None)

    @property
    def wb(self) -> "WorkbenchApp":
        return self.app  # type: ignore[return-value]

    @property
    def engine(self) -> "Engine":
        return self.wb.engine

    def current_finding(self) -> "Finding | None":
        """What `p` pins on this screen; None when there is nothing to pin yet."""
        return None

    def main_widget(self) -> Any:
        """What escape from a text field focuses (None: nothing, so single-letter keys act)."""
        return None

    def back(self) -> bool:
        """Escape outside a text field: close something this screen opened and return True, or False to let the
        app go back to the previous screen."""
        return False

    def help_about(self) -> str:
        return ""
