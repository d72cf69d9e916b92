"""What every workbench screen shares: the navigation line, a status line for inline messages, pinning, and the one
way to ask the engine (`WorkbenchScreen.ask` / `attempt`, built on `reported`).

The error rule for screens: a stale request (`StaleRequest`) is ignored; an `AttnscopeError` is shown inline as its
one line; anything else is a bug, logged with its traceback (the bug log in the data dir and Textual's log) and
shown as `bug: <one line> (traceback in <path>)`. No screen catches exceptions itself.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from workbench.engine import AttnscopeError, Cancelled, StaleRequest, one_line, plain, record_bug

T = TypeVar("T")

if TYPE_CHECKING:
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.findings import Finding

# (mode name, key, label): the order of the navigation line and of the number keys (every screen; digits switch
# screens everywhere, the study's own keys are letters)
SCREENS: list[tuple[str, str, str]] = [
    ("explore", "1", "Explore"),
    ("feature", "2", "Feature"),
    ("heads", "3", "Heads"),
    ("induction", "4", "Induction"),
    ("ioi", "5", "IOI"),
    ("training", "6", "Training"),
    ("findings", "7", "Findings"),
    ("study", "8", "Study"),
]
SHORT_LABELS = {"Explore": "Expl", "Feature": "Feat", "Induction": "Induct", "Training": "Train", "Findings": "Find"}
BRAND = " attnscope "
NAV_HINT = "  ? keys · ^p palette"


def nav_text(current: str, width: int = 200) -> Text:
    """Every screen with the digit that reaches it, the current one reversed; as much as fits in `width` columns:
    the brand and a hint first go, then the labels shorten, the digits always stay."""
    for brand, short, hint in ((True, False, True), (True, False, False), (False, False, False), (False, True, False)):
        text = Text(BRAND, style="bold reverse") if brand else Text()
        for mode, key, label in SCREENS:
            text.append(" ")
            style = "bold reverse" if mode == current else ""
            text.append(key, style=(style + " underline").strip())
            text.append(f" {SHORT_LABELS.get(label, label) if short else label}", style=style)
        if hint:
            text.append(NAV_HINT, style="dim")
        if text.cell_len <= width:
            return text
    return text


class NavBar(Static):
    """The navigation line: every screen and its digit (`nav_text`), fitted to the terminal's width."""

    DEFAULT_CSS = "NavBar { dock: top; height: 1; }"

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def render(self) -> Text:
        return nav_text(self.current, self.size.width or 200)


class StatusLine(Static):
    """One line under a screen's controls: progress notes in dim, bad input in red (the input itself stays)."""

    DEFAULT_CSS = "StatusLine { height: 1; }"

    def __init__(self, text: str = "", **kwargs: Any) -> None:
        super().__init__(text, **kwargs)
        self.message = text
        self.is_error = False

    def say(self, message: str) -> None:
        self.message, self.is_error = message, False
        self.update(plain(message, style="dim"))

    def error(self, message: str) -> None:
        self.message, self.is_error = message, True
        self.update(plain(message, style="bold red"))


@dataclass(frozen=True)
class Failure:
    """A failed request as the user sees it: `text` one line; `bug` True when it was not an `AttnscopeError`."""

    text: str
    bug: bool
    error: BaseException


def failure_of(exc: BaseException, where: str = "", log: Any = None) -> Failure:
    """An `AttnscopeError` (or a `Cancelled`) is its one line; anything else is a bug: its traceback goes to the bug log and to `log`
    (a Textual logger, e.g. `screen.log`), and its text says where the traceback is."""
    if isinstance(exc, (AttnscopeError, Cancelled)):  # Cancelled: the user stopped it, said as such
        return Failure(one_line(exc), False, exc)
    line = record_bug(exc, where)
    if log is not None:
        log.error("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return Failure(line, True, exc)


@contextmanager
def reported(on_error: Callable[[Failure], None], where: str = "", log: Any = None) -> Iterator[None]:
    """Run the block; a `StaleRequest` is ignored, any other failure goes to `on_error` as a `Failure`."""
    try:
        yield
    except StaleRequest:
        return
    except Exception as exc:  # noqa: BLE001 - the one place a UI request's failure is caught, sorted by failure_of
        on_error(failure_of(exc, where, log))


async def ask_engine(request: Awaitable[T], on_error: Callable[[Failure], None], where: str = "",
                     log: Any = None) -> T | None:
    """Await an engine request: its result, or None when it was stale (ignored) or failed (handed to `on_error`;
    bugs are logged with their traceback first). `WorkbenchScreen.ask` and the modal screens use it."""
    result: T | None = None
    with reported(on_error, where, log):
        result = await request
    return result


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

    # ---- asking the engine ---------------------------------------------------------------------------------

    def show_failure(self, failure: Failure) -> None:
        """Inline on the screen's status line (or a notification when it has none)."""
        lines = self.query(StatusLine)
        if lines:
            lines.first().error(failure.text)
        else:
            self.notify(failure.text, severity="error", timeout=10)

    async def ask(self, request: Awaitable[T], on_error: Callable[[Failure], None] | None = None) -> T | None:
        """Await an engine request: its result, or None when it was stale (ignored) or failed (shown by `on_error`,
        default `show_failure`; bugs are logged with their traceback first)."""
        return await ask_engine(request, on_error or self.show_failure, f"{self.MODE} screen", self.log)

    def attempt(self, fn: Callable[..., T], *args: Any, on_error: Callable[[Failure], None] | None = None,
                **kwargs: Any) -> T | None:
        """`ask` for a synchronous call (starting a job, writing a label): its result, or None when it failed."""
        result: T | None = None
        with reported(on_error or self.show_failure, f"{self.MODE} screen", self.log):
            result = fn(*args, **kwargs)
        return result

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
