"""A token x feature heatmap drawn with Textual's Line API.

Rows are prompt tokens, columns are features; a cell's shade is its activation relative to that feature's peak on
the prompt, and the number in it is the activation itself. One widget draws every cell: `render_line` returns a
cached `Strip` per row (the cursor row is cached with its cursor column), so a prompt of hundreds of tokens scrolls
and moves its cursor without building hundreds of widgets. The header row (feature ids) and the token column stay
put while the cells scroll.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.cache import LRUCache
from textual.color import Color
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from workbench.messages import CellSelected

CELL = 6  # characters per feature column
LEVELS = 9  # shades between "off" and a feature's peak
_ESCAPES = {"\n": "↵", "\t": "⇥", "\r": "␍", "\x00": "␀"}


def escape_token(text: str) -> str:
    """A token as one printable line inside running text: newline ↵, tab ⇥, other control characters as escapes;
    spaces stay spaces."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def visible_token(text: str) -> str:
    """A token on its own (the heatmap's token column, a cell title): like `escape_token`, and spaces as ␣ so
    ' the' and 'the' differ at a glance; the empty token as ∅."""
    return escape_token(text).replace(" ", "␣") if text else "∅"


def fit(text: str, width: int) -> str:
    """Cut or pad to exactly `width` cells (tokens are short; wide characters count as one, good enough here)."""
    return text[:width].ljust(width) if len(text) <= width else text[: width - 1] + "…"


def shade_levels(values: np.ndarray) -> np.ndarray:
    """`values [pos, col]` -> integer shade `[pos, col]` in 0..LEVELS, relative to each column's peak.

    0 means inactive (value <= 0); an active cell gets at least shade 1 so a weak firing is still visible.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.zeros(v.shape, dtype=np.int64)
    peak = np.maximum(v.max(axis=0, keepdims=True), 1e-12)
    lv = np.ceil(np.clip(v / peak, 0.0, 1.0) * LEVELS).astype(np.int64)
    return np.where(v > 0, np.maximum(lv, 1), 0)


def format_value(v: float) -> str:
    if v <= 0:
        return "·"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


@dataclass
class HeatmapData:
    """What the heatmap draws. `values [pos, col]`: activation of feature `columns[col]` at token `pos`."""

    tokens: list[str]
    columns: list[int]
    values: np.ndarray
    labels: dict[int, str] = field(default_factory=dict)  # feature id -> short label, shown in the tooltip line

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32).reshape(len(self.tokens), len(self.columns))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.tokens), len(self.columns)

    @classmethod
    def empty(cls) -> "HeatmapData":
        return cls(tokens=[], columns=[], values=np.zeros((0, 0)))


class Heatmap(ScrollView, can_focus=True):
    """The token x feature grid. Arrow keys move the cursor; each move posts `CellSelected`."""

    BINDINGS = [
        Binding("up", "move(-1, 0)", "Up", show=False),
        Binding("down", "move(1, 0)", "Down", show=False),
        Binding("left", "move(0, -1)", "Left", show=False),
        Binding("right", "move(0, 1)", "Right", show=False),
        Binding("pageup", "move(-10, 0)", "Page up", show=False),
        Binding("pagedown", "move(10, 0)", "Page down", show=False),
        Binding("home", "jump(0)", "First token", show=False),
        Binding("end", "jump(-1)", "Last token", show=False),
    ]
    DEFAULT_CSS = """
    Heatmap { height: 1fr; }
    """
    COMPONENT_CLASSES = {"heatmap--header", "heatmap--token", "heatmap--cursor", "heatmap--hot", "heatmap--cold"}

    cursor_row: reactive[int] = reactive(0, repaint=False)
    cursor_col: reactive[int] = reactive(0, repaint=False)

    def __init__(self, data: HeatmapData | None = None, token_width: int = 14, **kwargs) -> None:
        super().__init__(**kwargs)
        self.token_width = token_width
        self._cache: LRUCache[tuple, Strip] = LRUCache(1024)
        self._levels = np.zeros((0, 0), dtype=np.int64)
        self.data = HeatmapData.empty()
        if data is not None:
            self.set_data(data)

    # ---- data -------------------------------------------------------------------------------------------

    def set_data(self, data: HeatmapData, keep_cursor: bool = True) -> None:
        """Draw new data; the cursor stays on the same cell when it still exists."""
        self.data = data
        self._levels = shade_levels(data.values)
        self._cache.clear()
        n_rows, n_cols = data.shape
        row = min(self.cursor_row, max(n_rows - 1, 0)) if keep_cursor else 0
        col = min(self.cursor_col, max(n_cols - 1, 0)) if keep_cursor else 0
        self.virtual_size = Size(self.gutter_width + n_cols * CELL, n_rows + 1)
        self.set_reactive(Heatmap.cursor_row, row)
        self.set_reactive(Heatmap.cursor_col, col)
        self.refresh()
        if n_rows and n_cols:
            self.post_message(CellSelected(row, col))

    @property
    def gutter_width(self) -> int:
        return 5 + self.token_width + 1  # "  12 " + token + "│"

    @property
    def selected(self) -> tuple[int, int] | None:
        """(token position, column index) under the cursor, or None when empty."""
        n_rows, n_cols = self.data.shape
        if not n_rows or not n_cols:
            return None
        return self.cursor_row, self.cursor_col

    # ---- cursor -----------------------------------------------------------------------------------------

    def action_move(self, d_row: int, d_col: int) -> None:
        n_rows, n_cols = self.data.shape
        if not n_rows or not n_cols:
            return
        self.move_to(self.cursor_row + d_row, self.cursor_col + d_col)

    def action_jump(self, row: int) -> None:
        n_rows, _ = self.data.shape
        if n_rows:
            self.move_to(row % n_rows, self.cursor_col)

    def move_to(self, row: int, col: int) -> None:
        n_rows, n_cols = self.data.shape
        if not n_rows or not n_cols:
            return
        row = max(0, min(n_rows - 1, row))
        col = max(0, min(n_cols - 1, col))
        old_row = self.cursor_row
        if (row, col) == (self.cursor_row, self.cursor_col):
            return
        self.set_reactive(Heatmap.cursor_row, row)
        self.set_reactive(Heatmap.cursor_col, col)
        self._keep_cursor_visible()
        # only the two rows whose strips changed need drawing again
        self.refresh_line(old_row + 1)
        self.refresh_line(row + 1)
        self.refresh_line(self.scroll_offset.y)  # the sticky header marks the cursor column
        self.post_message(CellSelected(row, col))

    def _keep_cursor_visible(self) -> None:
        body_h = max(1, self.scrollable_content_region.height - 1)
        y = self.scroll_offset.y
        if self.cursor_row < y:
            y = self.cursor_row
        elif self.cursor_row >= y + body_h:
            y = self.cursor_row - body_h + 1
        body_w = max(CELL, self.scrollable_content_region.width - self.gutter_width)
        visible = max(body_w // CELL, 1)  # whole columns drawn (see `_render_row`)
        x = self.scroll_offset.x
        first = -(-x // CELL)
        if self.cursor_col < first:
            x = self.cursor_col * CELL
        elif self.cursor_col >= first + visible:
            x = (self.cursor_col - visible + 1) * CELL
        if (x, y) != tuple(self.scroll_offset):
            self.scroll_to(x, y, animate=False, immediate=True)
            self.refresh()

    # ---- drawing ----------------------------------------------------------------------------------------

    def _styles(self) -> tuple[Style, Style, Style, Style, list[Style]]:
        base = self.rich_style
        header = self.get_component_rich_style("heatmap--header")
        token = self.get_component_rich_style("heatmap--token")
        cursor = self.get_component_rich_style("heatmap--cursor")
        hot = self.get_component_rich_style("heatmap--hot").color
        cold = self.get_component_rich_style("heatmap--cold").color
        bg = Color.from_rich_color(base.bgcolor) if base.bgcolor else Color(0, 0, 0)
        hot_c = Color.from_rich_color(hot) if hot else Color(255, 140, 0)
        cold_c = Color.from_rich_color(cold) if cold else Color(120, 120, 120)
        shades = [Style(color=cold_c.rich_color, bgcolor=bg.rich_color)]
        for lv in range(1, LEVELS + 1):
            fill = bg.blend(hot_c, 0.15 + 0.85 * lv / LEVELS)
            shades.append(Style(bgcolor=fill.rich_color, color=fill.get_contrast_text(0.9).rich_color))
        return base, header, token, cursor, shades

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        if y == 0:
            row = -1
        else:
            row = scroll_y + y - 1
            if row >= len(self.data.tokens):
                return Strip.blank(width, self.rich_style)
        cursor_col = self.cursor_col if row in (-1, self.cursor_row) else -1
        key = (row, cursor_col, scroll_x, width, self.has_focus)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._render_row(row, cursor_col, scroll_x, width)
            self._cache[key] = strip
        return strip

    def _render_row(self, row: int, cursor_col: int, scroll_x: int, width: int) -> Strip:
        base, header, token_style, cursor, shades = self._styles()
        gutter = self.gutter_width
        if row == -1:
            left = [Segment(fit(" pos  token", gutter - 1), header), Segment("│", header)]
            cells = []
            for c, fid in enumerate(self.data.columns):
                style = header + cursor if c == cursor_col and self.data.tokens else header
                cells.append(Segment(f"{fid:>{CELL - 1}} ", style))
        else:
            on_row = row == self.cursor_row
            tok = fit(visible_token(self.data.tokens[row]), self.token_width)
            num_style = (token_style + cursor) if on_row else token_style
            left = [Segment(f"{row:>4} ", num_style), Segment(tok, num_style), Segment("│", token_style)]
            cells = []
            for c in range(len(self.data.columns)):
                v = float(self.data.values[row, c])
                style = shades[int(self._levels[row, c])]
                if c == cursor_col:
                    style = style + cursor
                cells.append(Segment(f"{format_value(v):>{CELL - 1}} ", style))
        body = Strip(cells, len(self.data.columns) * CELL)
        body_w = max(0, width - gutter)
        # whole columns only: a column cut in half shows digits that read as another feature id
        first = -(-scroll_x // CELL) * CELL
        shown = max(body_w // CELL, 1) * CELL if body_w >= CELL else 0
        body = body.crop(first, first + shown).extend_cell_length(body_w, base)
        return Strip.join([Strip(left, gutter), body]).simplify()

    def on_focus(self) -> None:
        self._cache.clear()
        self.refresh()

    def on_blur(self) -> None:
        self._cache.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()
