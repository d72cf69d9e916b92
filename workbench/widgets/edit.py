"""A one-line text field with undo: Textual's `Input` (8.x) has none (its `TextArea` has, on ctrl+z / ctrl+y), so the
prompt and the note / path questions use this one, on the same keys as `TextArea`.

Nothing is selected when it gets the focus (the first key edits the text, never replaces it). Each edit is one undo
step, except that a run of typed (or deleted) characters within one word is one step, as in an editor; a value set by
the program (a prompt from the history) is a step too, so ctrl+z brings back what was typed before it.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

MAX_STEPS = 200


def one_char_edit(old: str, new: str) -> str:
    """'insert' when `new` is `old` with one non-space character added, 'delete' when one removed, else ''."""
    if len(new) == len(old) + 1:
        for i in range(len(new)):
            if new[:i] + new[i + 1:] == old:
                return "" if new[i].isspace() else "insert"
    if len(new) == len(old) - 1:
        for i in range(len(old)):
            if old[:i] + old[i + 1:] == new:
                return "" if old[i].isspace() else "delete"
    return ""


class UndoInput(Input):
    """`Input` with ctrl+z (undo) and ctrl+y (redo), and no select-all on focus."""

    BINDINGS = [
        Binding("ctrl+z", "undo", "Undo", show=False),
        Binding("ctrl+y,ctrl+shift+z", "redo", "Redo", show=False),
    ]

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("select_on_focus", False)
        self._restoring = True  # Input's __init__ sets the value: that is no step
        super().__init__(*args, **kwargs)
        self.undo_steps: list[tuple[str, int]] = []  # (value, cursor) before each step, oldest first
        self.redo_steps: list[tuple[str, int]] = []
        self._last_kind = ""  # the kind of the last one-character edit ("insert" / "delete"), "" after anything else
        self._restoring = False
        self._cursor_before = 0

    def on_mount(self) -> None:
        self.reset_undo()

    def reset_undo(self) -> None:
        """Forget the steps (the value now is where undo stops)."""
        self.undo_steps.clear()
        self.redo_steps.clear()
        self._last_kind = ""
        self._cursor_before = len(self.value)

    def watch_cursor_position(self, position: int) -> None:
        if not self._restoring:
            self._cursor_before = position

    def watch_value(self, old: str, new: str) -> None:
        if self._restoring or old == new:
            return
        kind = one_char_edit(old, new)
        if not (kind and kind == self._last_kind and self.undo_steps):
            self.undo_steps.append((old, min(self._cursor_before, len(old))))
            del self.undo_steps[:-MAX_STEPS]
        self._last_kind = kind
        self.redo_steps.clear()

    def _restore(self, value: str, cursor: int) -> None:
        self._restoring = True
        try:
            self.value = value
            self.cursor_position = min(cursor, len(value))
        finally:
            self._restoring = False
        self._last_kind = ""
        self._cursor_before = self.cursor_position

    def action_undo(self) -> None:
        """Back one step (a word typed, a paste, a cut, a prompt taken from the history)."""
        if not self.undo_steps:
            self.app.bell()
            return
        self.redo_steps.append((self.value, self.cursor_position))
        self._restore(*self.undo_steps.pop())

    def action_redo(self) -> None:
        if not self.redo_steps:
            self.app.bell()
            return
        self.undo_steps.append((self.value, self.cursor_position))
        self._restore(*self.redo_steps.pop())
