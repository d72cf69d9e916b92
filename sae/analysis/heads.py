"""Head survey: which features each attention head writes, which role they have, and whether the head is
monosemantic or polysemantic (Kissane et al. inspected GPT-2 Small's heads' top-10 features this way and found at
least 90% polysemantic). Reads built dashboards (`sae.analysis.dashboards`). A feature's role is its human label
where one exists (`sae.analysis.labels`), else its automatic role (`sae.analysis.roles`); every head and layer says
which it used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sae.analysis.dashboards import feature_stats
from sae.analysis.roles import RULES, Confirmer, LayerRoles, RoleReport

UNNAMED = ("other", "uninterpretable")  # labels that say "no one kind", so never make a head monosemantic


def criterion_text(n_top: int, agree: float) -> str:
    need = "all" if agree >= 1.0 else f"at least {agree:.0%}"
    return (
        f"monosemantic when {need} of the head's top-{n_top} live features by decoder-norm share have one role "
        f"(not {' or '.join(repr(u) for u in UNNAMED)}); polysemantic otherwise. A feature's role is its human label "
        "where one exists (`attnscope study`), else its automatic role (`attnscope roles`: previous-token, "
        "duplicate-token, induction, short/long-range context); each head says which it used. This is the paper's "
        "test (are the head's top-10 features of one kind?)."
    )


@dataclass
class HeadFeature:
    id: int
    decoder_share: float  # this head's share of ||W_dec[i]|| over heads
    dfa_share: float  # this head's share of the positive DFA-by-head on the feature's top examples
    density: float
    role: str  # the human label if there is one, else the automatic role
    source: str = "automatic"  # "human" (the label file) or "automatic" (sae.analysis.roles)


@dataclass
class HeadReport:
    layer: int
    head: int
    top_by_decoder: list[HeadFeature]
    top_by_dfa: list[HeadFeature]
    roles: dict[str, int]  # role counts among top_by_decoder
    verdict: str  # monosemantic | polysemantic
    main_role: str
    source: str = "automatic"  # "human", "automatic" or "mixed (k of n human)": where its top features' roles came from


@dataclass
class LayerHeads:
    layer: int
    heads: list[HeadReport]
    polysemantic_fraction: float
    source: str = "automatic roles"  # what the fraction rests on: human labels, automatic roles, or a mix


@dataclass
class HeadSurvey:
    model: str
    criterion: str
    role_rules: list[str]
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


def verdict(roles: list[str], agree: float = 1.0) -> tuple[str, str]:
    """(verdict, main role) for a head's top features' roles: monosemantic when at least `agree` of them share one
    role that is not in UNNAMED."""
    if not roles:
        return "polysemantic", "other"
    counts: dict[str, int] = {}
    for f in roles:
        counts[f] = counts.get(f, 0) + 1
    named = [f for f in counts if f not in UNNAMED]
    if named:
        main = max(named, key=lambda f: counts[f])
        if counts[main] >= agree * len(roles) - 1e-9:
            return "monosemantic", main
    return "polysemantic", max(counts, key=lambda f: counts[f])


def _source(n_human: int, n: int) -> str:
    if n and n_human == n:
        return "human"
    return "automatic" if n_human == 0 else f"mixed ({n_human} of {n} human)"


def survey_layer(
    directory: Path, n_top: int = 10, agree: float = 1.0, labels: dict[int, str] | None = None,
    confirm: Confirmer | None = None, roles: LayerRoles | RoleReport | None = None,
) -> LayerHeads:
    """Survey one layer's heads. labels: `{feature: human label}` of this layer's SAE (they win over the
    automatic roles); roles: the layer's automatic roles, as a `LayerRoles` (the engine's) or a `RoleReport`
    (`sae.analysis.cache.layer_roles` keeps them); None: scored here, with `confirm` the induction test."""
    stats = feature_stats(directory)
    if isinstance(roles, RoleReport):
        role_of = roles.role_of()
        role: Callable[[int], str] = lambda i: role_of.get(i, "")  # noqa: E731
    else:
        lr = roles if roles is not None else LayerRoles(directory, stats, confirm)
        lr.confirm()  # every induction candidate tested in one go
        role = lr.role
    labels = labels or {}
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
                            density=float(density[i]), role=labels[i] if i in labels else role(i) or "other",
                            source="human" if i in labels else "automatic")
                for i in ids
            ]

        by_dec, by_dfa = top(dec[:, h].float()), top(dfa[:, h].float())
        rs = [f.role for f in by_dec]
        v, main = verdict(rs, agree)
        n_human = sum(f.source == "human" for f in by_dec)
        heads.append(HeadReport(layer=idx["layer"], head=h, top_by_decoder=by_dec, top_by_dfa=by_dfa,
                                roles={r: rs.count(r) for r in dict.fromkeys(rs)}, verdict=v,
                                main_role=main, source=_source(n_human, len(by_dec))))
    poly = sum(r.verdict == "polysemantic" for r in heads) / max(1, len(heads))
    n_h = sum(f.source == "human" for r in heads for f in r.top_by_decoder)
    n_all = sum(len(r.top_by_decoder) for r in heads)
    src = ("human labels" if n_all and n_h == n_all else "automatic roles" if n_h == 0
           else f"human labels for {n_h} of {n_all} top features, automatic roles for the rest")
    return LayerHeads(layer=idx["layer"], heads=heads, polysemantic_fraction=poly, source=src)


def survey_heads(
    directories: dict[int, Path], model: str = "", n_top: int = 10, agree: float = 1.0,
    labels: dict[int, dict[int, str]] | None = None, confirm: dict[int, Confirmer] | None = None,
    roles: dict[int, LayerRoles | RoleReport] | None = None,
) -> HeadSurvey:
    """Survey every head of every layer in `directories` ({layer: built dashboard dir}). labels: per layer,
    `{feature: human label}`; roles: per layer, its automatic roles (`LayerRoles` or `RoleReport`; else scored
    here with `confirm`, per layer the induction test)."""
    labels, confirm, roles = labels or {}, confirm or {}, roles or {}
    layers = [survey_layer(directories[layer], n_top, agree, labels.get(layer), confirm.get(layer), roles.get(layer))
              for layer in sorted(directories)]
    all_heads = [h for lh in layers for h in lh.heads]
    poly = sum(h.verdict == "polysemantic" for h in all_heads) / max(1, len(all_heads))
    return HeadSurvey(model=model, criterion=criterion_text(n_top, agree), role_rules=list(RULES), dfa_note=DFA_NOTE,
                      layers=layers, polysemantic_fraction=poly)
