"""Signed horizontal bars (per-head DFA, ablation effects) and a shaded token strip (DFA by source position)."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.widgets import Static

from workbench.widgets.heatmap import escape_token

POS = "dark_orange"
NEG = "dodger_blue2"
EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar_cells(value: float, max_abs: float, width: int) -> str:
    """A bar of `width` cells for `|value| / max_abs`, in eighths of a cell."""
    if max_abs <= 0 or width <= 0:
        return ""
    frac = min(1.0, abs(value) / max_abs)
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)[:width]


def bar_cells_left(value: float, max_abs: float, width: int) -> str:
    """The same bar growing leftwards; Unicode has no right-aligned eighths, so the tip is a half block or none."""
    if max_abs <= 0 or width <= 0:
        return " " * max(width, 0)
    eighths = round(min(1.0, abs(value) / max_abs) * width * 8)
    full, part = divmod(eighths, 8)
    return (("▐" if part >= 4 else "") + "█" * full).rjust(width)[-width:]


def bar_scale(values: Sequence[float], scale: float | None = None) -> float:
    """What a full bar stands for: `scale` when given (never below the largest |value|), else the largest |value|."""
    top = max((abs(v) for v in values), default=0.0)
    return max(top, scale) if scale is not None else top


def signed_bars(labels: Sequence[str], values: Sequence[float], width: int = 20, label_width: int = 6,
                scale: float | None = None) -> Text:
    """One line per label: negative values grow left of the axis, positive ones right, value printed after. A full
    half-bar is `bar_scale(values, scale)`: pass the quantity's natural size (a feature's peak) so that small
    values draw small bars."""
    text = Text(no_wrap=True, overflow="ellipsis")
    max_abs = bar_scale(values, scale)
    half = max(1, width // 2)
    for i, (label, v) in enumerate(zip(labels, values)):
        if i:
            text.append("\n")
        text.append(f"{label:<{label_width}}"[:label_width], style="bold")
        pos = bar_cells(v, max_abs, half) if v > 0 else ""
        text.append(bar_cells_left(v, max_abs, half) if v < 0 else " " * half, style=NEG)
        text.append("│", style="dim")
        text.append(pos.ljust(half), style=POS)
        text.append(f" {v:+.3f}")
    return text


class FitBars:
    """`signed_bars` as wide as the space it is drawn in (a rich renderable): a narrow column draws shorter bars,
    never cut labels or values. The label column is as wide as the longest label."""

    def __init__(self, labels: Sequence[str], values: Sequence[float], max_width: int = 20,
                 scale: float | None = None) -> None:
        self.labels, self.values = list(labels), [float(v) for v in values]
        self.max_width, self.scale = max_width, scale
        self.label_width = max((len(x) for x in self.labels), default=0) + 1

    def width_for(self, room: int) -> int:
        """The bars' width (both halves) in `room` columns: what is left after the labels, the axis and the value."""
        return max(2, min(self.max_width, room - self.label_width - 1 - 7))

    def __rich_console__(self, console, options):
        yield signed_bars(self.labels, self.values, width=self.width_for(options.max_width),
                          label_width=self.label_width, scale=self.scale)


class HeadBars(Static):
    """Per-head signed values, e.g. DFA by head for the selected (token, feature)."""

    DEFAULT_CSS = "HeadBars { height: auto; }"

    def __init__(self, title: str = "", **kwargs) -> None:
        super().__init__("", **kwargs)
        self.title = title
        self.values: list[float] = []
        self.labels: list[str] = []
        self.scale_line = ""

    def show(self, labels: Sequence[str], values: Sequence[float], extra: str = "", scale: float | None = None,
             scale_name: str = "") -> None:
        """Bars of `values`; a line under them says what a full bar is (`scale`, named `scale_name`, or the largest
        value)."""
        self.labels, self.values = list(labels), [float(v) for v in values]
        width = max(10, (self.size.width or 40) - 18)
        text = Text(self.title + "\n", style="bold") if self.title else Text()
        text.append_text(signed_bars(self.labels, self.values, width=width, scale=scale))
        full = bar_scale(self.values, scale)
        named = scale_name if scale is not None and full == scale else "largest"
        self.scale_line = f"full bar {full:.3f} = {named}" if full > 0 else "all zero"
        text.append("\n" + self.scale_line, style="dim")
        if extra:
            text.append("\n" + extra, style="dim")
        self.update(text)

    def clear(self, message: str = "") -> None:
        self.labels, self.values = [], []
        self.update(Text(message, style="dim"))


def source_strip(tokens: Sequence[str], values: Sequence[float], upto: int | None = None) -> Text:
    """Tokens in a line, each shaded by its signed value (orange positive, blue negative); `upto` gets a box."""
    text = Text()
    max_abs = max((abs(v) for v in values), default=0.0) or 1.0
    for i, tok in enumerate(tokens):
        v = float(values[i]) if i < len(values) else 0.0
        strength = min(1.0, abs(v) / max_abs)
        if strength < 0.05:
            style = "dim" if i < len(values) else "dim italic"
        else:
            level = 1 + int(strength * 4)  # 1..5
            colour = POS if v > 0 else NEG
            style = f"bold on {colour}" if level >= 4 else f"{colour}"
        if upto is not None and i == upto:
            style += " underline"
        text.append(escape_token(tok) or "∅", style=style)
        text.append(" ")
    return text


class SourceStrip(Static):
    """DFA by source position over the prompt for the selected (token, feature)."""

    DEFAULT_CSS = "SourceStrip { height: auto; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.values: list[float] = []

    def show(self, tokens: Sequence[str], values: Sequence[float], upto: int, top: int = 3) -> None:
        self.values = [float(v) for v in values]
        text = Text("DFA by source  ", style="bold")
        ranked = sorted(range(len(self.values)), key=lambda i: -abs(self.values[i]))[:top]
        text.append("  ".join(f"{i}:{escape_token(tokens[i])!s} {self.values[i]:+.2f}" for i in ranked), style="dim")
        text.append("\n")
        text.append_text(source_strip(tokens[: upto + 1], self.values, upto=upto))
        self.update(text)

    def clear(self, message: str = "") -> None:
        self.values = []
        self.update(Text(message, style="dim"))
