"""The footer every workbench screen shows: Textual's `Footer`, with `? Help` always first and `^q Quit` and the
command palette key pinned to the right edge (as lazygit keeps `?` in view), so a narrow terminal cuts only the
screen's own keys in the middle, never the two a new user needs to find the rest."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.widgets import Footer
from textual.widget import Widget
from textual.widgets._footer import FooterKey

HELP_ACTIONS = ("help", "app.help")
PINNED_ACTIONS = ("quit", "app.quit")  # right edge, beside the palette key


def action_of(widget: Widget) -> str:
    """A footer key's action ("" for a label or a group): Textual's `FooterKey` keeps it as `action`."""
    return str(getattr(widget, "action", "") or "")


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
    """`Footer` with the help key first and quit + palette pinned right; compact (more keys fit at 80 columns)."""

    def __init__(self) -> None:
        super().__init__(compact=True)

    def compose(self) -> ComposeResult:
        children = list(super().compose())
        help_keys = [c for c in children if action_of(c) in HELP_ACTIONS][:1]
        pinned = [c for c in children if action_of(c) in PINNED_ACTIONS][:1]
        palette = [c for c in children if c.has_class("-command-palette")]
        rest = [c for c in children if action_of(c) not in HELP_ACTIONS + PINNED_ACTIONS and c not in palette]
        yield from help_keys
        yield from rest
        if pinned or palette:
            with PinnedKeys():
                yield from pinned
                yield from palette
        self.call_after_refresh(self.fit_keys)

    def on_resize(self) -> None:
        for key in self.query(FooterKey):
            key.display = True
        self.call_after_refresh(self.fit_keys)

    def fit_keys(self) -> None:
        """Hide the screen keys that do not fit whole before the pinned ones (a key cut to `s S` reads as
        another key); `?` lists them all."""
        pinned = self.query(PinnedKeys)
        limit = pinned.first().region.x if pinned else self.region.right
        for key in self.query(FooterKey):
            if key.parent is self and key.display and key.region.width:
                key.display = key.region.right <= limit
