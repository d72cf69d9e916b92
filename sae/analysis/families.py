"""Feature families (Kissane et al.): induction, short-range context, long-range context, other.

A feature is classified from the DFA by source of its top activating examples (stored by the dashboard build,
see `sae.analysis.dashboards.source_facts`). The rules, in order (the first that holds wins):
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.analysis.dashboards import distance_bin, feature_stats

FAMILIES = ("induction", "short-range context", "long-range context", "other")
SHORT_MAX = 6  # distances 0..6 are "a few tokens"
LONG_MIN = 15  # distances >= 15 are "far back"
SHARE = 0.5

RULES = [
    "induction: in a layer >= 1 (a layer-0 feature is never induction: its heads cannot compose with an earlier "
    "one), in at least half of the feature's top examples, the source with the largest positive DFA (BOS left "
    "out) comes right after an earlier copy of the current token (tokens[src-1] == tokens[dest], src <= dest-2, "
    "so a previous-token head on text like 'x.y.' does not count)",
    f"short-range context: else, if on average >= {SHARE:.0%} of the positive source DFA (BOS left out) comes from "
    f"sources at most {SHORT_MAX} tokens back",
    f"long-range context: else, if on average >= {SHARE:.0%} of it comes from sources {LONG_MIN} or more tokens back",
    "other: everything else, including features whose top examples have no positive source DFA",
]
__doc__ = (__doc__ or "") + "\n" + "\n".join(f"- {r}" for r in RULES) + "\n"


def _bin_ranges(n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distance bin, its first and last distance (see `sae.analysis.dashboards.distance_bin`)."""
    b = torch.arange(n_bins)
    return 2**b - 1, 2 ** (b + 1) - 2


def near_far_masks(n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bins wholly within `SHORT_MAX` and bins wholly at or beyond `LONG_MIN`."""
    lo, hi = _bin_ranges(n_bins)
    return hi <= SHORT_MAX, lo >= LONG_MIN


@dataclass
class FamilyScores:
    """The numbers a feature's family is decided from."""

    induction: float  # fraction of its DFA examples that look like induction
    near: float  # mean share of positive source DFA within SHORT_MAX
    far: float  # mean share at LONG_MIN or beyond
    n_examples: int


def family_scores(induction_flags: torch.Tensor, dist_mass: torch.Tensor) -> FamilyScores:
    """induction_flags `[n]` (0/1), dist_mass `[n, n_bins]` positive DFA mass per distance bin, for the n top
    examples that have DFA. Examples without positive mass count as neither near nor far."""
    n = int(induction_flags.numel())
    if n == 0:
        return FamilyScores(0.0, 0.0, 0.0, 0)
    near_m, far_m = near_far_masks(dist_mass.shape[-1])
    total = dist_mass.sum(-1)
    ok = total > 0
    near = torch.where(ok, dist_mass[:, near_m].sum(-1) / total.clamp_min(1e-12), torch.zeros_like(total))
    far = torch.where(ok, dist_mass[:, far_m].sum(-1) / total.clamp_min(1e-12), torch.zeros_like(total))
    return FamilyScores(float(induction_flags.float().mean()), float(near.mean()), float(far.mean()), n)


def classify(scores: FamilyScores, can_compose: bool = True) -> str:
    """Apply RULES in order; `can_compose` is False for layer 0, whose features are never induction."""
    if scores.n_examples == 0:
        return "other"
    if can_compose and scores.induction >= 0.5:
        return "induction"
    if scores.near >= SHARE:
        return "short-range context"
    if scores.far >= SHARE:
        return "long-range context"
    return "other"


def mass_at_distances(per_src: list[float], dest: int) -> torch.Tensor:
    """Positive DFA mass per distance bin of one example, from its DFA by source over positions 0..dest (BOS = 0
    left out). A helper for building cases by hand."""
    from sae.analysis.dashboards import n_distance_bins

    nb = n_distance_bins(max(dest + 1, 2))
    out = torch.zeros(nb)
    for s, v in enumerate(per_src[: dest + 1]):
        if s >= 1 and v > 0:
            out[min(int(distance_bin(torch.tensor(dest - s))), nb - 1)] += v
    return out


# ---- a whole layer ------------------------------------------------------------------------------------


@dataclass
class FamilyExample:
    feature: int
    act: float
    tokens: list[str]
    center: int
    top_source_token: str | None
    distance: int | None
    scores: FamilyScores

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["scores"] = dict(self.scores.__dict__)
        return d


@dataclass
class FamilyReport:
    model: str
    layer: int
    rules: list[str]
    n_live: int
    counts: dict[str, int]
    features: dict[str, list[int]]  # family -> feature ids
    examples: dict[str, list[FamilyExample]] = field(default_factory=dict)

    def family_of(self) -> dict[int, str]:
        return {i: fam for fam, ids in self.features.items() for i in ids}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "rules": self.rules,
            "n_live": self.n_live,
            "counts": self.counts,
            "families": [
                {
                    "family": fam,
                    "count": self.counts[fam],
                    "fraction": self.counts[fam] / self.n_live if self.n_live else 0.0,
                    "examples": [e.to_dict() for e in self.examples.get(fam, [])],
                    "features": self.features[fam],
                }
                for fam in FAMILIES
            ],
        }


def _context(stats: dict[str, Any], feature: int, vocab: dict[str, str], C: int) -> tuple[list[str], int]:
    tok = stats["top_tok"][feature, 0]
    keep = (tok >= 0).nonzero().flatten()
    if len(keep) == 0:
        return [], 0
    return [vocab.get(str(int(t)), "?") for t in tok[keep].tolist()], C - int(keep[0])


def classify_layer(directory: Path, n_examples: int = 3, stats: dict[str, Any] | None = None) -> FamilyReport:
    """Classify every live feature of a built dashboard directory."""
    stats = stats if stats is not None else feature_stats(directory)
    idx = stats["index"]
    vocab, C = idx["vocab"], idx["spec"]["context"]
    row_len = idx["row_len"]
    live = (stats["n_fire"] > 0).nonzero().flatten().tolist()
    feats: dict[str, list[int]] = {f: [] for f in FAMILIES}
    scored: dict[str, list[tuple[float, int, FamilyScores]]] = {f: [] for f in FAMILIES}
    n_dfa = stats["dfa_pre"].shape[1]
    for i in live:
        sel = stats["top_val"][i, :n_dfa] > 0  # the top examples that got DFA by source
        sc = family_scores(stats["dfa_induction"][i][sel], stats["dfa_dist"][i][sel])
        fam = classify(sc, can_compose=int(idx["layer"]) >= 1)
        feats[fam].append(i)
        strength = {"induction": sc.induction, "short-range context": sc.near, "long-range context": sc.far}.get(fam, 0.0)
        scored[fam].append((strength + 1e-3 * float(stats["density"][i]), i, sc))
    examples: dict[str, list[FamilyExample]] = {}
    for fam, items in scored.items():
        items.sort(key=lambda x: -x[0])
        out = []
        for _, i, sc in items[:n_examples]:
            tokens, center = _context(stats, i, vocab, C)
            src = int(stats["dfa_top_src"][i, 0])
            dest = int(stats["top_idx"][i, 0]) % row_len
            out.append(FamilyExample(
                feature=i, act=float(stats["top_val"][i, 0]), tokens=tokens, center=center,
                top_source_token=vocab.get(str(int(stats["dfa_src_tok"][i, 0])), None) if src >= 0 else None,
                distance=dest - src if src >= 0 else None, scores=sc,
            ))
        examples[fam] = out
    return FamilyReport(
        model=idx["model"], layer=idx["layer"], rules=list(RULES), n_live=len(live),
        counts={f: len(v) for f, v in feats.items()}, features=feats, examples=examples,
    )
