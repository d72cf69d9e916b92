"""The footer every workbench screen shows: Textual's `Footer`, with `? Help` always first and `^q Quit` and the
command palette key pinned to the right edge (as lazygit keeps `?` in view), so a narrow terminal leaves out only
the screen's own last keys (whole keys: one cut to `s S` reads as another key), never the two a new user needs to
find the rest (`?` lists every key)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.widget import Widget
from textual.widgets import Footer, Input, TextArea
from textual.widgets._footer import FooterKey

HELP_ACTIONS = ("help", "app.help")
PINNED_ACTIONS = ("quit", "app.quit")  # right edge, beside the palette key


def action_of(widget: Widget) -> str:
    """A footer key's action ("" for a label or a group): Textual's `FooterKey` keeps it as `action`."""
    return str(getattr(widget, "action", "") or "")


def key_width(widget: Widget) -> int:
    """Columns a compact footer key takes: its key, a space and its description (`FooterKey`'s compact style)."""
    key = str(getattr(widget, "key_display", "") or "")
    description = str(getattr(widget, "description", "") or "")
    return len(key) + (1 + len(description) if description else 0)


def typed_key(widget: Widget) -> bool:
    """A key a text field takes as text (a letter, a digit, `/`, `?`), not as a command."""
    key = str(getattr(widget, "key", "") or "")
    return len(str(getattr(widget, "key_display", "") or "")) == 1 and not key.startswith(("ctrl+", "escape", "enter"))


class PinnedKeys(HorizontalGroup):
    """The keys held at the footer's right edge."""

    DEFAULT_CSS = """
    PinnedKeys {
        dock: right;
        width: auto;
        height: 1;
        background: $footer-background;
        border-left: vkey $foreground 20%;
    }
    PinnedKeys FooterKey { margin: 0 0 0 1; }
    PinnedKeys FooterKey.-command-palette { dock: none; border-left: none; padding-right: 0; }
    """


class WorkbenchFooter(Footer):
    """`Footer` with the help key first and quit + palette pinned right; compact (more keys fit at 80 columns); the
    screen's keys that do not fit whole between them are left out."""

    def __init__(self) -> None:
        super().__init__(compact=True)
        self._composed_width = 0

    def compose(self) -> ComposeResult:
        children = list(super().compose())
        help_keys = [c for c in children if action_of(c) in HELP_ACTIONS][:1]
        pinned = [c for c in children if action_of(c) in PINNED_ACTIONS][:1]
        palette = [c for c in children if c.has_class("-command-palette")]
        rest = [c for c in children if action_of(c) not in HELP_ACTIONS + PINNED_ACTIONS and c not in palette]
        if isinstance(self.screen.focused, (Input, TextArea)):
            # typing: ? and the letters type themselves; say how to get out, where ? helps again
            help_keys = [FooterKey("escape", "esc", "Leave the field (then ? helps)", "app.back").data_bind(
                compact=Footer.compact)]
            rest = [c for c in rest if not typed_key(c)]
        width = self.size.width or self.app.size.width
        self._composed_width = width
        room = width - sum(1 + key_width(k) for k in pinned + palette) - (1 if pinned or palette else 0)
        x = 0
        for c in help_keys + rest:
            w = key_width(c)
            if c not in help_keys and x + w > room:
                break  # this key and those after it are in ? only
            x += w + 1  # a compact key's right margin
            yield c
        if pinned or palette:
            with PinnedKeys():
                yield from pinned
                yield from palette

    def on_resize(self) -> None:
        if self.size.width != self._composed_width:
            self.refresh(recompose=True)
