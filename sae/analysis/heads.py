"""Head survey: which features each attention head writes, which family they fall in, and whether the head is
monosemantic or polysemantic (Kissane et al. inspected GPT-2 Small's heads' top-10 features this way and found at
least 90% polysemantic). Reads built dashboards (`sae.analysis.dashboards`) and feature families (`sae.analysis.families`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.analysis.dashboards import feature_stats
from sae.analysis.families import FAMILIES, RULES, classify_layer

NAMED = ("induction", "short-range context", "long-range context")


def criterion_text(n_top: int, agree: float) -> str:
    need = "all" if agree >= 1.0 else f"at least {agree:.0%}"
    return (
        f"monosemantic when {need} of the head's top-{n_top} live features by decoder-norm share fall in one named "
        f"family ({', '.join(NAMED)}); polysemantic otherwise. This is the paper's test (are the head's top-10 "
        "features of one kind?) with the family rules standing in for reading the dashboards by hand."
    )


@dataclass
class HeadFeature:
    id: int
    decoder_share: float  # this head's share of ||W_dec[i]|| over heads
    dfa_share: float  # this head's share of the positive DFA-by-head on the feature's top examples
    density: float
    family: str


@dataclass
class HeadReport:
    layer: int
    head: int
    top_by_decoder: list[HeadFeature]
    top_by_dfa: list[HeadFeature]
    families: dict[str, int]  # family counts among top_by_decoder
    verdict: str  # monosemantic | polysemantic
    main_family: str


@dataclass
class LayerHeads:
    layer: int
    heads: list[HeadReport]
    polysemantic_fraction: float


@dataclass
class HeadSurvey:
    model: str
    criterion: str
    family_rules: list[str]
    dfa_note: str
    layers: list[LayerHeads] = field(default_factory=list)
    polysemantic_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


DFA_NOTE = (
    "top_by_dfa ranks live features by the head's share of the positive DFA by head on each feature's top "
    "activating examples in the dashboard corpus."
)


def dfa_head_shares(dfa_heads: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`[d_sae, H]`: each head's share of positive DFA-by-head, summed over a feature's valid top examples.

    dfa_heads `[d_sae, n_dfa, H]`, valid `[d_sae, n_dfa]` (bool)."""
    pos = dfa_heads.clamp(min=0) * valid.unsqueeze(-1)
    tot = pos.sum(1)  # [d_sae, H]
    return tot / tot.sum(-1, keepdim=True).clamp_min(1e-12)


def verdict(families: list[str], agree: float = 1.0) -> tuple[str, str]:
    """(verdict, main family) for a head's top features' families."""
    if not families:
        return "polysemantic", "other"
    counts = {f: families.count(f) for f in FAMILIES}
    main = max(NAMED, key=lambda f: counts[f])
    if counts[main] > 0 and counts[main] >= agree * len(families) - 1e-9:
        return "monosemantic", main
    return "polysemantic", max(FAMILIES, key=lambda f: counts[f])


def survey_layer(directory: Path, n_top: int = 10, agree: float = 1.0) -> LayerHeads:
    stats = feature_stats(directory)
    fam = classify_layer(directory, stats=stats).family_of()
    idx = stats["index"]
    live = stats["n_fire"] > 0
    dec = stats["head_share"]  # [d_sae, H]
    n_dfa = stats["dfa_heads"].shape[1]
    dfa = dfa_head_shares(stats["dfa_heads"], stats["top_val"][:, :n_dfa] > 0)
    density = stats["density"]
    heads = []
    for h in range(dec.shape[1]):

        def top(score: torch.Tensor) -> list[HeadFeature]:
            s = torch.where(live, score, torch.full_like(score, -1.0))
            k = min(n_top, int(live.sum()))
            ids = s.topk(k).indices.tolist() if k else []
            return [
                HeadFeature(id=i, decoder_share=float(dec[i, h]), dfa_share=float(dfa[i, h]),
                            density=float(density[i]), family=fam.get(i, "other"))
                for i in ids
            ]

        by_dec, by_dfa = top(dec[:, h].float()), top(dfa[:, h].float())
        fams = [f.family for f in by_dec]
        v, main = verdict(fams, agree)
        heads.append(HeadReport(layer=idx["layer"], head=h, top_by_decoder=by_dec, top_by_dfa=by_dfa,
                                families={f: fams.count(f) for f in FAMILIES if fams.count(f)}, verdict=v,
                                main_family=main))
    poly = sum(r.verdict == "polysemantic" for r in heads) / max(1, len(heads))
    return LayerHeads(layer=idx["layer"], heads=heads, polysemantic_fraction=poly)


def survey_heads(directories: dict[int, Path], model: str = "", n_top: int = 10, agree: float = 1.0) -> HeadSurvey:
    """Survey every head of every layer in `directories` ({layer: built dashboard dir})."""
    layers = [survey_layer(directories[layer], n_top, agree) for layer in sorted(directories)]
    all_heads = [h for lh in layers for h in lh.heads]
    poly = sum(h.verdict == "polysemantic" for h in all_heads) / max(1, len(all_heads))
    return HeadSurvey(model=model, criterion=criterion_text(n_top, agree), family_rules=list(RULES), dfa_note=DFA_NOTE,
                      layers=layers, polysemantic_fraction=poly)
