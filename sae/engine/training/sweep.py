"""Sparsity sweeps: the L0 vs CE-loss-recovered / explained-variance frontier and the point it recommends.

A sweep trains one SAE per layer and sparsity value from the same batches (`TrainConfig.k` or `l1_coeff` as a
list). Each point is then scored on held-out tokens; `choose_point` picks the sparsest point (lowest mean L0)
whose every layer reaches the quality bar (CE loss recovered >= 0.9 and explained variance >= 0.8 by default),
or, when none does, the point with the best mean CE loss recovered (EV when CE is unknown). `score_sweep` scores
a finished sweep's SAEs (`evaluate_saes` on held-out rows, or the training figures of the last step without a model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sae.engine.autoencoder import SAE
    from sae.engine.training.config import TrainConfig

CE_BAR, EV_BAR = 0.9, 0.8
SCORED = ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction")


def sweep_label(param: str, value: float) -> str:
    """The sub-directory of one sweep point: `k32`, `l1_0.5`."""
    if param == "k":
        return f"k{int(value)}"
    return f"l1_{value:g}"


@dataclass
class SweepPoint:
    """One sparsity value's SAEs: their per-layer figures and means over layers."""

    label: str  # "k32", "l1_0.5"
    value: float
    layers: dict[int, dict[str, float]] = field(default_factory=dict)  # layer -> l0, explained_variance, ce_loss_recovered, dead_fraction
    chosen: bool = False

    def mean(self, key: str) -> float:
        vals = [v.get(key) for v in self.layers.values()]
        vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) / len(vals) if vals else float("nan")

    def meets(self, ce_bar: float, ev_bar: float) -> bool:
        for m in self.layers.values():
            ce = m.get("ce_loss_recovered")
            if ce is not None and not math.isnan(ce) and ce < ce_bar:
                return False
            ev = m.get("explained_variance")
            if ev is None or math.isnan(ev) or ev < ev_bar:
                return False
        return bool(self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = {str(k): v for k, v in self.layers.items()}
        d.update({f"mean_{k}": self.mean(k) for k in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction")})
        return d


def choose_point(points: list[SweepPoint], ce_bar: float = CE_BAR, ev_bar: float = EV_BAR) -> SweepPoint | None:
    """Mark and return the recommended point (see the module docstring)."""
    if not points:
        return None
    for p in points:
        p.chosen = False
    good = [p for p in points if p.meets(ce_bar, ev_bar)]
    if good:
        best = min(good, key=lambda p: p.mean("l0"))
    else:
        def score(p: SweepPoint) -> float:
            ce = p.mean("ce_loss_recovered")
            return ce if not math.isnan(ce) else p.mean("explained_variance")

        best = max(points, key=lambda p: (score(p) if not math.isnan(score(p)) else -math.inf))
    best.chosen = True
    return best


def text_plot(points: list[SweepPoint], y_key: str = "ce_loss_recovered", width: int = 48, height: int = 12) -> str:
    """A plain-text scatter of mean L0 (x) against `y_key` (y): one letter per point (a, b, c... in sweep order),
    the chosen point drawn as '*'."""
    xs = [p.mean("l0") for p in points]
    ys = [p.mean(y_key) for p in points]
    ok = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    if not ok:
        return f"(no {y_key} to plot)"
    x0, x1 = min(x for x, _ in ok), max(x for x, _ in ok)
    y0, y1 = min(y for _, y in ok), max(y for _, y in ok)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 0.01)
    grid = [[" "] * width for _ in range(height)]
    for i, (p, x, y) in enumerate(zip(points, xs, ys)):
        if math.isnan(x) or math.isnan(y):
            continue
        col = round((x - x0) / (x1 - x0) * (width - 1))
        row = height - 1 - round((y - y0) / (y1 - y0) * (height - 1))
        grid[row][col] = "*" if p.chosen else chr(ord("a") + i % 26)
    lines = []
    for r, cells in enumerate(grid):
        label = f"{y1:6.3f} " if r == 0 else f"{y0:6.3f} " if r == height - 1 else " " * 7
        lines.append(label + "|" + "".join(cells))
    lines.append(" " * 7 + "+" + "-" * width)
    lines.append(" " * 8 + f"{x0:<10.1f}" + f"mean L0 -> {y_key}".center(width - 20) + f"{x1:>10.1f}")
    legend = ", ".join(f"{'*' if p.chosen else chr(ord('a') + i % 26)} = {p.label}" for i, p in enumerate(points))
    lines.append(" " * 8 + legend)
    return "\n".join(lines)


def score_sweep(cfg: TrainConfig, saes: dict[str, dict[int, SAE]], train_metrics: dict[str, dict[int, dict[str, float]]],
                model: Any = None, rows: torch.Tensor | None = None) -> list[SweepPoint]:
    """Every point of a finished sweep scored, the recommended one marked (`choose_point`).

    `saes` and `train_metrics` are by sweep label (`TrainOutcome.sweep`, `.sweep_metrics`). With a `model` and
    held-out `rows [n, context]`, each point's SAEs are evaluated there (L0, EV, CE loss recovered, dead
    fraction); without, the training figures of the last step stand in (no CE loss recovered)."""
    from sae.engine.metrics import evaluate_saes

    points = []
    for value in cfg.sweep_values:
        label = sweep_label(cfg.sparsity_param, value)
        point = SweepPoint(label, float(value))
        if model is not None and rows is not None:
            layer_saes = {layer: s.to(model.device) for layer, s in saes[label].items()}
            for r in evaluate_saes(model, layer_saes, rows):
                point.layers[r.layer] = {k: getattr(r, k) for k in SCORED}
        else:
            for layer, m in train_metrics[label].items():
                point.layers[layer] = {k: m.get(k, float("nan")) for k in SCORED if k != "ce_loss_recovered"}
        points.append(point)
    choose_point(points)
    return points
