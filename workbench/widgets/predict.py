"""What the model predicts: the explore side panel's next-token top-k (before / after an intervention), the loss
change, the per-token loss strip, and one head's attention pattern as a text grid."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rich.text import Text
from textual.widgets import Static

from workbench.widgets.heatmap import visible_token

SHADES = " ░▒▓█"


def _tok(t: str, width: int = 10) -> str:
    s = visible_token(t)
    return s if len(s) <= width else s[: width - 1] + "…"


def predictions_text(tokens: Sequence[str], top: Sequence[Any], pos: int, k: int = 10,
                     loss: Sequence[float] | None = None, width: int = 60) -> Text:
    """The model's own top-k after token `pos` (probabilities), and the per-token loss strip when `loss` is given."""
    text = Text()
    head = f"next {'' if width < 40 else 'token '}after {pos} "  # the token whole where the panel allows it
    head += _tok(tokens[pos], max(6, width - len(head))) if pos < len(tokens) else "?"
    text.append(head, style="bold")
    hint = "(a ablates the cell · i sets/scales · l loss)" if width >= 50 else "a ablate · i set · l loss"
    text.append(("  " if len(head) + 2 + len(hint) <= width else "\n") + hint + "\n", style="dim")
    tw = max(6, min(14, width - 12))
    for i, t in enumerate(top[:k]):
        text.append(f"{i + 1:>2} ", style="dim")
        text.append(f"{_tok(t.token, tw):<{tw}}", style="bold" if i == 0 else "")
        text.append(f" {t.prob:6.1%}\n", style="dim")
    if loss is not None:
        text.append("loss per token (of the token that follows)\n", style="bold")
        peak = max(loss) if loss else 1.0
        for t, v in enumerate(loss):
            shade = SHADES[min(len(SHADES) - 1, int(v / peak * (len(SHADES) - 1) + 0.5))] if peak > 0 else " "
            style = "reverse" if t == pos else ""
            text.append(f"{t:>3} {_tok(tokens[t + 1], 12):<12} {v:6.3f} {shade * 3}\n", style=style)
    return text


def intervention_text(v: Any, k: int = 10, width: int = 60) -> Text:
    """Before / after columns of the next-token top-k, the loss change, the logits that moved, later features;
    token columns as wide as `width` (the panel's) allows."""
    tw = max(5, min(12, (width - 14) // 2))  # two columns of token + ' 99.6%', two spaces apart
    text = Text()
    text.append(f"L{v.layer} {v.describe}\n", style="bold")
    d = v.loss_after - v.loss_before
    text.append(f"loss {v.loss_before:.4f} → {v.loss_after:.4f} ", style="")
    text.append(f"({d:+.4f})\n", style="red" if d > 0 else "green")
    text.append(f"next token after {v.at} {_tok(v.tokens[v.at])}\n", style="bold")
    text.append(f"{'before':<{tw + 8}}after\n", style="dim")
    before = {t.id for t in v.top_before}
    for i in range(min(k, len(v.top_before))):
        b, a = v.top_before[i], v.top_after[i]
        text.append(f"{_tok(b.token, tw):<{tw}} {b.prob:5.1%}  ")
        text.append(f"{_tok(a.token, tw):<{tw}}", style="bold" if a.id not in before else "")
        text.append(f" {a.prob:5.1%}\n")
    edited = ", ".join(f"{p}:{a:.2f}→{n:.2f}" for p, a, n in zip(v.positions[:6], v.activation, v.new_activation))
    if not v.positions:
        text.append("it does not fire there: nothing changed (i sets a value)\n", style="yellow")
    else:
        text.append(f"edited {len(v.positions)} position(s) {edited}{' …' if len(v.positions) > 6 else ''}\n", style="dim")
    if d == 0 and v.positions and set(v.positions) == {len(v.tokens) - 1}:
        text.append("(the last token's prediction is not part of the prompt's loss)\n", style="dim")
    if v.logit_change:
        text.append("logits that moved most\n", style="bold")
        for tok, _id, b, a in v.logit_change[:5]:
            text.append(f"{_tok(tok, tw):<{tw}} {b:+7.2f} → {a:+7.2f}\n", style="green" if a > b else "red")
    if v.downstream:
        text.append("later features that changed most\n", style="bold")
        for layer, feat, pos, b, a in v.downstream[:5]:
            text.append(f"L{layer} F{feat} @{pos}  {b:.2f} → {a:.2f}\n", style="dim")
    return text


class PredictPanel(Static):
    """The explore screen's prediction panel (top of the side panel)."""

    DEFAULT_CSS = "PredictPanel { height: auto; margin-bottom: 1; }"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._draw: Any = None  # redraws the last content at the current width

    def _width(self) -> int:
        return self.size.width or (self.parent.size.width - 2 if self.parent is not None else 60) or 60

    def _show(self, draw: Any) -> None:
        self._draw = draw
        self.update(draw(self._width()))

    def on_resize(self) -> None:
        if self._draw is not None:
            self.update(self._draw(self._width()))

    def show_predictions(self, tokens: Sequence[str], top: Sequence[Any], pos: int,
                         loss: Sequence[float] | None = None) -> None:
        # a short terminal keeps room for the cell's DFA below: the top 5 there, the top 10 from 36 rows
        k = 10 if self.app.size.height >= 36 else 5
        self._show(lambda w: predictions_text(tokens, top, pos, k=k, loss=loss, width=w))

    def show_intervention(self, view: Any) -> None:
        self._show(lambda w: intervention_text(view, width=w))

    def show_message(self, message: str, style: str = "dim") -> None:
        self._draw = None
        self.update(Text(message, style=style))


def pattern_text(tokens: Sequence[str], values: np.ndarray, max_tokens: int = 48) -> Text:
    """A query x key grid: one row per query token, one shaded cell per key (`values [query, key]`); the
    strongest key of each row is named at its end."""
    n = min(len(tokens), max_tokens)
    text = Text()
    text.append(" " * 13 + "".join(f"{k % 10}" for k in range(n)) + "   (key position mod 10)\n", style="dim")
    for q in range(n):
        row = values[q, :n]
        text.append(f"{q:>3} {_tok(tokens[q], 8):<8} ", style="dim")
        for kk in range(n):
            x = float(row[kk])
            text.append(SHADES[min(len(SHADES) - 1, int(x * (len(SHADES) - 1) + 0.5))] if kk <= q else " ",
                        style="cyan")
        best = int(np.argmax(values[q, : q + 1]))
        text.append(f"  → {best} {_tok(tokens[best], 8)} {float(values[q, best]):.2f}\n", style="dim")
    if len(tokens) > n:
        text.append(f"(first {n} of {len(tokens)} tokens)\n", style="dim")
    return text
