"""Live metric sparklines (training loss, L0, explained variance, dead fraction) and text histograms."""

from __future__ import annotations

import math
from typing import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

BLOCKS = "▁▂▃▄▅▆▇█"


def spark_text(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters scaled between their min and max (for markdown and tests)."""
    vals = [v for v in values if v is not None and math.isfinite(v)][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int((v - lo) / span * (len(BLOCKS) - 1) + 0.5))] for v in vals)


def histogram_text(counts: Sequence[float], edges: Sequence[float] | None = None, height: int = 4) -> Text:
    """Counts as a small column chart, `height` rows of eighth-blocks, with the edge values underneath."""
    counts = list(counts)
    top = max(counts, default=0) or 1
    rows = []
    for r in range(height, 0, -1):
        line = ""
        for c in counts:
            level = c / top * height
            if level >= r:
                line += "█"
            elif level > r - 1:
                line += BLOCKS[max(0, int((level - (r - 1)) * 8) - 1)]
            else:
                line += " "
        rows.append(line)
    text = Text("\n".join(rows), style="dark_orange")
    if edges is not None and len(edges) >= 2:
        lo, hi = f"{edges[0]:.2g}", f"{edges[-1]:.2g}"
        text.append("\n" + lo + hi.rjust(max(1, len(counts) - len(lo))), style="dim")
    return text


class MetricSpark(Vertical):
    """A label with the latest value over a sparkline of the history."""

    DEFAULT_CSS = """
    MetricSpark { height: 3; }
    MetricSpark Label { width: 1fr; }
    MetricSpark Sparkline { height: 2; }
    """

    def __init__(self, name: str, fmt: str = "{:.4g}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.metric = name
        self.fmt = fmt
        self.values: list[float] = []

    def compose(self) -> ComposeResult:
        yield Label(self._label())
        yield Sparkline([], summary_function=max)

    def _label(self) -> Text:
        text = Text(f"{self.metric} ", style="bold")
        if self.values:
            text.append(self.fmt.format(self.values[-1]))
        else:
            text.append("–", style="dim")
        return text

    def push(self, value: float) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        self.values.append(float(value))
        self.query_one(Label).update(self._label())
        self.query_one(Sparkline).data = self.values[-200:]

    def reset(self) -> None:
        self.values = []
        self.query_one(Label).update(self._label())
        self.query_one(Sparkline).data = []
