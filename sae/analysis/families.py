"""The paper's feature families (Kissane et al.): induction, short-range context, long-range context, other.

attnscope does not classify families on their own: a feature's family is a fixed mapping of its automatic role
(`sae.analysis.roles`, the one classifier), the table `FAMILY_OF_ROLE`. So a feature has one role and one family
everywhere, and the family always says it was mapped from the role. Why each row:

- induction -> induction: the paper's "X is next by induction" (the role also asks for the repeated-token test).
- previous-token -> short-range context: at least half the positive source DFA comes from t-1, one token back,
  which is within the short range (`SHORT_MAX` tokens), so the short-range rule holds too.
- short-range context, long-range context -> themselves (the same distance rules).
- duplicate-token -> other: the paper names duplicate-token beside the three families (a GPT-2 Small motif, like
  previous-token, successor, copy-suppression), not within one; the earlier copy may be any distance back.
- other -> other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.analysis.roles import LONG_MIN, ROLES, SHORT_MAX, Confirmer, LayerRoles, RoleScores

FAMILIES = ("induction", "short-range context", "long-range context", "other")
FAMILY_OF_ROLE: dict[str, str] = {
    "induction": "induction",
    "duplicate-token": "other",
    "previous-token": "short-range context",
    "short-range context": "short-range context",
    "long-range context": "long-range context",
    "other": "other",
}

MAPPING_NOTE = ("each family is mapped from the feature's automatic role (`attnscope roles`): "
                + ", ".join(f"{r} -> {f}" for r, f in FAMILY_OF_ROLE.items())
                + f" (short range: sources at most {SHORT_MAX} tokens back; long range: {LONG_MIN} or more)")


def paper_family(role: str) -> str:
    """The paper's family of an automatic role ("" for "", a human label that is not a role -> "")."""
    return FAMILY_OF_ROLE.get(role, "")


def roles_of(family: str) -> list[str]:
    """The roles that map to `family`, in `ROLES` order."""
    return [r for r in ROLES if FAMILY_OF_ROLE[r] == family]


# ---- a whole layer ------------------------------------------------------------------------------------


@dataclass
class FamilyExample:
    feature: int
    role: str  # the automatic role the family was mapped from
    act: float
    tokens: list[str]
    center: int
    top_source_token: str | None
    distance: int | None
    scores: RoleScores

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["scores"] = dict(self.scores.__dict__)
        return d


@dataclass
class FamilyReport:
    model: str
    layer: int
    mapping: dict[str, str]  # role -> family
    role_rules: list[str]
    confirmation: str  # how the role's induction test went
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
            "source": "paper families mapped from the automatic roles",
            "mapping": self.mapping,
            "role_rules": self.role_rules,
            "confirmation": self.confirmation,
            "n_live": self.n_live,
            "counts": self.counts,
            "families": [
                {
                    "family": fam,
                    "from_roles": roles_of(fam),
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


def _strength(role: str, sc: RoleScores) -> float:
    """How clearly a feature shows its role (for picking examples)."""
    return {"induction": sc.induction, "duplicate-token": sc.duplicate, "previous-token": sc.previous,
            "short-range context": sc.near, "long-range context": sc.far}.get(role, 0.0)


def classify_layer(directory: Path | None, n_examples: int = 3, stats: dict[str, Any] | None = None,
                   confirm: Confirmer | None = None, roles: LayerRoles | None = None) -> FamilyReport:
    """Every live feature of a built dashboard directory in its paper family, mapped from its automatic role.

    roles: the layer's `LayerRoles` (else built from `directory`/`stats` with `confirm`, the induction test)."""
    from sae.analysis.dashboards import feature_stats

    stats = stats if stats is not None else feature_stats(directory)
    lr = roles if roles is not None else LayerRoles(directory, stats, confirm)
    rep = lr.report()
    idx = stats["index"]
    vocab, C = idx["vocab"], idx["spec"]["context"]
    row_len = idx["row_len"]
    feats: dict[str, list[int]] = {f: [] for f in FAMILIES}
    scored: dict[str, list[tuple[float, int]]] = {f: [] for f in FAMILIES}
    for i, fr in rep.roles.items():
        fam = FAMILY_OF_ROLE[fr.role]
        feats[fam].append(i)
        scored[fam].append((_strength(fr.role, fr.scores) + 1e-3 * float(stats["density"][i]), i))
    examples: dict[str, list[FamilyExample]] = {}
    for fam, items in scored.items():
        items.sort(key=lambda x: -x[0])
        out = []
        for _, i in items[:n_examples]:
            tokens, center = _context(stats, i, vocab, C)
            src = int(stats["dfa_top_src"][i, 0])
            dest = int(stats["top_idx"][i, 0]) % row_len
            out.append(FamilyExample(
                feature=i, role=rep.roles[i].role, act=float(stats["top_val"][i, 0]), tokens=tokens, center=center,
                top_source_token=vocab.get(str(int(stats["dfa_src_tok"][i, 0])), None) if src >= 0 else None,
                distance=dest - src if src >= 0 else None, scores=rep.roles[i].scores,
            ))
        examples[fam] = out
    return FamilyReport(
        model=idx["model"], layer=idx["layer"], mapping=dict(FAMILY_OF_ROLE), role_rules=list(rep.rules),
        confirmation=rep.confirmation, n_live=rep.n_live, counts={f: len(v) for f, v in feats.items()},
        features=feats, examples=examples,
    )
