"""Automatic roles of attention-SAE features: the one classifier of what a feature does, each role testable on the data.

attnscope names a feature three ways, and every screen and export says which one it shows:

- its **automatic role** (this module: induction, duplicate-token, previous-token, short-range context, long-range
  context, other), scored once per layer by `LayerRoles`;
- the **paper family** (Kissane et al.'s coarse induction / short-range / long-range context / other), never
  classified on its own: a fixed mapping of the role (`sae.analysis.families.FAMILY_OF_ROLE`);
- a **human label**, stored in the label file (`sae.analysis.labels`, `labels.json`), which wins where one exists.

A role is read from the DFA by source of a feature's top activating examples (stored by the dashboard build; see
`sae.analysis.dashboards.source_facts`), with BOS left out as a source. Per example:

- the share of the positive DFA that comes from the previous token (`t - 1`);
- whether the source with the largest positive DFA (the *top source*) is an earlier copy of the current token at
  least 2 back (duplicate-token), or the token right after an earlier copy of the current token, at least 2 back
  (induction: "the token after the last time I appeared");
- the positive DFA mass by source distance (short- and long-range context).

The induction relation of an example is computed once, by the dashboard scan (`dfa_induction`, see
`sae.analysis.dashboards.source_facts`), and read here.

Induction needs two heads in series (a previous-token head writes "the token before me was A" at `s`, the
induction head at the second A reads it), so **a layer-0 feature is never called induction**: its heads read token
and position embeddings only. In later layers an induction candidate must also be **confirmed on repeated random
tokens**: the feature's own (current token, next token) pair is planted in random tokens that then repeat, and the
feature must fire more on the repeat than on the first occurrence, with its top DFA source on the token after the
first occurrence (`confirm_induction`).

The rules, in order (the first that holds wins), are in `RULES` and printed with every result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae.engine.jobs import CancelToken, ProgressFn

if TYPE_CHECKING:
    from sae.engine.autoencoder import SAE
    from sae.engine.models import LoadedModel

ROLES: tuple[str, ...] = (
    "induction", "duplicate-token", "previous-token", "short-range context", "long-range context", "other",
)
SHARE = 0.5  # every rule's threshold: a share of DFA mass or a fraction of top examples
CONFIRM_FRACTION = 0.5  # of the repeated-random-token sequences that must show the induction behaviour
CONFIRM_SEQUENCES = 16
CONFIRM_HALF_LEN = 24  # random tokens before the repeat (the repeat has as many)
CONFIRM_SEED = 0  # the one seed of the induction test, so every screen and command gets the same answer
SHORT_MAX = 6  # distances 0..6 are "a few tokens"
LONG_MIN = 15  # distances >= 15 are "far back"


def rules(share: float = SHARE, confirm_fraction: float = CONFIRM_FRACTION) -> list[str]:
    """The role rules with their thresholds, in the order they are applied."""
    return [
        f"induction: layer >= 1 (a layer-0 feature is never induction: its heads cannot compose with an earlier "
        f"one), in at least {share:.0%} of the top examples the top DFA source (BOS left out) is the token right "
        f"after an earlier copy of the current token, at least 2 back, and confirmed on repeated random tokens: "
        f"with the feature's (current token, source token) pair planted in {CONFIRM_SEQUENCES} random sequences "
        f"that repeat, in at least {confirm_fraction:.0%} of them the feature fires more at the repeat than at the "
        f"first occurrence and its top DFA source there is the token after the first occurrence",
        f"duplicate-token: else, if in at least {share:.0%} of the top examples the top DFA source is an earlier "
        f"copy of the current token, at least 2 back",
        f"previous-token: else, if on average at least {share:.0%} of the positive DFA (BOS left out) comes from "
        f"the previous token (t-1)",
        f"short-range context: else, if on average at least {share:.0%} of it comes from sources at most "
        f"{SHORT_MAX} tokens back",
        f"long-range context: else, if on average at least {share:.0%} of it comes from sources {LONG_MIN} or "
        f"more tokens back",
        "other: everything else, including features whose top examples have no positive source DFA",
    ]


RULES = rules()
__doc__ = (__doc__ or "") + "\n" + "\n".join(f"- {r}" for r in RULES) + "\n"


# ---- source distances ---------------------------------------------------------------------------------------


def _bin_ranges(n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distance bin, its first and last distance (see `sae.analysis.dashboards.distance_bin`)."""
    b = torch.arange(n_bins)
    return 2**b - 1, 2 ** (b + 1) - 2


def near_far_masks(n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bins wholly within `SHORT_MAX` and bins wholly at or beyond `LONG_MIN`."""
    lo, hi = _bin_ranges(n_bins)
    return hi <= SHORT_MAX, lo >= LONG_MIN


def mass_at_distances(per_src: list[float], dest: int) -> torch.Tensor:
    """Positive DFA mass per distance bin of one example, from its DFA by source over positions 0..dest (BOS = 0
    left out). A helper for building cases by hand."""
    from sae.analysis.dashboards import distance_bin, n_distance_bins

    nb = n_distance_bins(max(dest + 1, 2))
    out = torch.zeros(nb)
    for s, v in enumerate(per_src[: dest + 1]):
        if s >= 1 and v > 0:
            out[min(int(distance_bin(torch.tensor(dest - s))), nb - 1)] += v
    return out


# ---- per example (pure tensor code) -----------------------------------------------------------------------


def example_relations(
    dfa_src: torch.Tensor, dfa_dist: torch.Tensor, top_src: torch.Tensor, src_tok: torch.Tensor,
    induction: torch.Tensor, dest_tok: torch.Tensor, dest: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """What the role rules read from each example; any leading shape `[...]`.

    dfa_src `[..., C+1]` DFA of sources `t-C .. t` (last entry = the destination itself); dfa_dist `[..., NB]`
    positive DFA mass per distance bin over the whole row, BOS left out; top_src `[...]` the top source's
    position (-1: none), src_tok `[...]` the token at it; induction `[...]` the scan's induction flag
    (`dfa_induction`: the top source follows an earlier copy of the current token, at least 2 back); dest_tok /
    dest `[...]` the current token and its position. Returns prev_share (positive DFA at t-1 over all positive
    DFA; 0 when t-1 is BOS), dup and ind (bool: the top-source relations), near and far (share of positive mass
    within SHORT_MAX / from LONG_MIN back).
    """
    C = dfa_src.shape[-1] - 1
    total = dfa_dist.sum(-1)
    ok = total > 0
    denom = total.clamp_min(1e-12)
    prev_mass = dfa_src[..., C - 1].clamp(min=0) * (dest - 1 >= 1)
    prev_share = torch.where(ok, prev_mass / denom, torch.zeros_like(total))
    has = (top_src >= 0) & ok
    dup = has & (top_src <= dest - 2) & (src_tok == dest_tok)
    ind = has & induction.bool()
    near_m, far_m = near_far_masks(dfa_dist.shape[-1])
    near = torch.where(ok, dfa_dist[..., near_m].sum(-1) / denom, torch.zeros_like(total))
    far = torch.where(ok, dfa_dist[..., far_m].sum(-1) / denom, torch.zeros_like(total))
    return {"prev_share": prev_share, "dup": dup, "ind": ind, "near": near, "far": far}


@dataclass(frozen=True)
class RoleScores:
    """The numbers a feature's role is decided from (means over its top examples that have DFA)."""

    previous: float  # mean share of positive DFA at t-1
    duplicate: float  # fraction of examples whose top source is an earlier copy of the current token
    induction: float  # fraction whose top source follows an earlier copy of the current token
    near: float
    far: float
    n_examples: int


def role_scores(rel: Mapping[str, torch.Tensor], valid: torch.Tensor) -> RoleScores:
    """Average `example_relations` output `[n]` over the `valid [n]` examples."""
    n = int(valid.sum())
    if n == 0:
        return RoleScores(0.0, 0.0, 0.0, 0.0, 0.0, 0)

    def mean(x: torch.Tensor) -> float:
        return float(x[valid].double().mean())

    return RoleScores(mean(rel["prev_share"]), mean(rel["dup"]), mean(rel["ind"]), mean(rel["near"]),
                      mean(rel["far"]), n)


def layer_role_scores(rel: Mapping[str, torch.Tensor], valid: torch.Tensor, features: Sequence[int]) -> dict[int, RoleScores]:
    """`role_scores` of each of `features`, from `rel` `[d_sae, n]` and `valid [d_sae, n]`, as whole-layer tensor
    sums (one pass, not one per feature: a 24576-wide layer has that many)."""
    idx = torch.as_tensor(list(features), dtype=torch.long)
    v = valid[idx].double()  # [F, n]
    n = v.sum(1)
    cols = []
    for key in ("prev_share", "dup", "ind", "near", "far"):
        x = torch.where(valid[idx], rel[key][idx].double(), torch.zeros((), dtype=torch.float64))
        cols.append(torch.where(n > 0, x.sum(1) / n.clamp(min=1), torch.zeros_like(n)))
    table = torch.stack(cols, 1).tolist()
    return {f: RoleScores(*row, int(k)) for f, row, k in zip(idx.tolist(), table, n.tolist())}


def can_compose(layer: int) -> bool:
    """Whether a head of `layer` can read what an earlier attention head wrote (needed for induction)."""
    return layer >= 1


def classify_role(scores: RoleScores, layer: int, confirmed: bool | None = None, share: float = SHARE) -> str:
    """Apply `rules(share)` in order. `confirmed`: the repeated-random-token test (None = not run, so an induction
    candidate is not called induction)."""
    if scores.n_examples == 0:
        return "other"
    if can_compose(layer) and scores.induction >= share and confirmed:
        return "induction"
    if scores.duplicate >= share:
        return "duplicate-token"
    if scores.previous >= share:
        return "previous-token"
    if scores.near >= share:
        return "short-range context"
    if scores.far >= share:
        return "long-range context"
    return "other"


def is_induction_candidate(scores: RoleScores, layer: int, share: float = SHARE) -> bool:
    """Passes the induction rule's DFA part and its layer test; only the repeated-token test is left."""
    return scores.n_examples > 0 and can_compose(layer) and scores.induction >= share


# ---- the repeated-random-token confirmation ------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatedPair:
    """`tokens [n, 2L+1]`: BOS, L random distinct tokens with `(a, b)` planted at `first`, `first+1`, repeated once.

    The current token `a` reappears at `second = first + L`; the induction source is `first + 1` (where `b` is)."""

    tokens: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor


def repeated_pair_sequences(
    pool: torch.Tensor, pair: tuple[int, int], n: int, half_len: int, generator: torch.Generator
) -> RepeatedPair:
    """`n` sequences of repeated random tokens with `pair` planted at a random position of the first half."""
    a, b = pair
    pool = pool[(pool != a) & (pool != b)]
    if half_len < 3 or len(pool) < half_len - 2:
        raise ValueError(f"repeated random tokens need {half_len - 2} usable tokens besides the pair")
    rows, firsts = [], []
    for _ in range(n):
        body = pool[torch.randperm(len(pool), generator=generator)[: half_len - 2]].tolist()
        i = int(torch.randint(0, half_len - 1, (1,), generator=generator))  # pair at body positions i, i+1
        half = body[:i] + [a, b] + body[i:]
        rows.append([-1] + half + half)
        firsts.append(1 + i)
    t = torch.tensor(rows, dtype=torch.long)
    first = torch.tensor(firsts)
    return RepeatedPair(t, first, first + half_len)


def confirm_from_measurements(act_first: torch.Tensor, act_repeat: torch.Tensor, top_is_induction: torch.Tensor,
                              fraction: float = CONFIRM_FRACTION) -> tuple[bool, float]:
    """(confirmed, share of sequences that showed it): the feature fires more at the repeat than at the first
    occurrence and its top DFA source there is the induction source. All arguments `[n]`."""
    hit = (act_repeat > act_first) & top_is_induction.bool()
    share = float(hit.float().mean()) if hit.numel() else 0.0
    return share >= fraction and hit.numel() > 0, share


@dataclass(frozen=True)
class Confirmation:
    feature: int
    pair: tuple[str, str]  # (current token, source token), as text
    act_first: float  # mean activation at the first occurrence of the current token
    act_repeat: float  # ... at its repeat
    top_source_hits: float  # fraction of sequences whose top DFA source at the repeat is the induction source
    share: float  # fraction of sequences that showed both
    confirmed: bool


@torch.no_grad()
def confirm_induction(
    model: "LoadedModel", sae: "SAE", layer: int, pairs: Mapping[int, tuple[int, int]], n: int = CONFIRM_SEQUENCES,
    half_len: int = CONFIRM_HALF_LEN, seed: int = 0, batch_size: int = 64, fraction: float = CONFIRM_FRACTION,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> dict[int, Confirmation]:
    """Run the repeated-random-token test for each `{feature: (current token id, source token id)}`.

    sae is the layer's SAE. Each feature gets `n` sequences (seeded by `seed` and the feature). Returns
    `{feature: Confirmation}`."""
    from sae.analysis.dfa import encoder_by_head, run_layer
    from sae.engine.activations import usable_token_ids
    from sae.engine.jobs import Steps

    half_len = max(3, min(half_len, (model.n_ctx - 1) // 2))
    pool = usable_token_ids(model)
    feats = sorted(pairs)
    jobs: list[tuple[int, torch.Tensor, int, int]] = []  # feature, tokens, first, second
    for f in feats:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + f)
        seqs = repeated_pair_sequences(pool, pairs[f], n, half_len, gen)
        seqs.tokens[:, 0] = model.bos_token_id
        for r in range(n):
            jobs.append((f, seqs.tokens[r], int(seqs.first[r]), int(seqs.second[r])))
    w = encoder_by_head(sae, model.n_heads)  # [H, dh, d_sae]
    steps = Steps("induction confirmation", -(-len(jobs) // batch_size), on_progress, cancel, unit="batches")
    act_f, act_r, top_hit = [], [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        toks = torch.stack([j[1] for j in chunk]).to(model.device)
        lt = run_layer(model, toks, layer)
        B, dev = len(chunk), lt.z.device
        rows = torch.arange(B)
        fid = torch.tensor([j[0] for j in chunk])
        first = torch.tensor([j[2] for j in chunk])
        second = torch.tensor([j[3] for j in chunk])
        z_pair = torch.stack([lt.z[rows.to(dev), first.to(dev)], lt.z[rows.to(dev), second.to(dev)]], 1)  # [B, 2, d_z]
        acts = sae.encode(z_pair).float().cpu()  # [B, 2, d_sae]
        act_f.append(acts[rows, 0, fid])
        act_r.append(acts[rows, 1, fid])
        v = lt.v.to(w.dtype)
        if v.shape[2] != model.n_heads:  # grouped-query attention
            v = v.repeat_interleave(model.n_heads // v.shape[2], dim=2)
        proj = torch.einsum("bshd,hdb->bhs", v, w[:, :, fid.to(w.device)])  # [B, H, S]
        pat = lt.pattern[rows.to(dev), :, second.to(dev), :].to(w.dtype)  # [B, H, S]
        per_src = (proj * pat).sum(1).float().cpu()  # [B, S]: DFA of each source at the repeat
        pos = torch.arange(per_src.shape[1]).unsqueeze(0)
        per_src = per_src.masked_fill((pos == 0) | (pos > second.unsqueeze(1)), float("-inf"))  # BOS left out
        top = per_src.argmax(1)
        top_hit.append((top == first + 1) & (per_src[rows, top] > 0))
        steps.step()
    act_first, act_repeat, hits = torch.cat(act_f), torch.cat(act_r), torch.cat(top_hit)
    out: dict[int, Confirmation] = {}
    for k, f in enumerate(feats):
        sl = slice(k * n, (k + 1) * n)
        ok, share = confirm_from_measurements(act_first[sl], act_repeat[sl], hits[sl], fraction)
        out[f] = Confirmation(
            feature=f, pair=tuple(model.token_strs(list(pairs[f]))), act_first=float(act_first[sl].mean()),
            act_repeat=float(act_repeat[sl].mean()), top_source_hits=float(hits[sl].float().mean()), share=share,
            confirmed=ok,
        )
    return out


# ---- a whole layer ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureRole:
    feature: int
    role: str
    scores: RoleScores
    induction_candidate: bool
    confirmation: Confirmation | None = None


@dataclass
class RoleReport:
    model: str
    layer: int
    rules: list[str]
    n_live: int
    counts: dict[str, int]
    features: dict[str, list[int]]  # role -> feature ids
    confirmation: str  # how induction candidates were confirmed (or why they were not)
    candidates: list[FeatureRole] = field(default_factory=list)  # induction candidates and their test
    roles: dict[int, FeatureRole] = field(default_factory=dict)

    def role_of(self) -> dict[int, str]:
        return {i: r for r, ids in self.features.items() for i in ids}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "layer": self.layer, "rules": self.rules, "n_live": self.n_live,
            "confirmation": self.confirmation,
            "roles": [
                {"role": r, "count": self.counts[r], "fraction": self.counts[r] / self.n_live if self.n_live else 0.0,
                 "features": self.features[r]}
                for r in ROLES
            ],
            "candidates": [
                {"feature": c.feature, "role": c.role, "scores": asdict(c.scores),
                 "confirmation": asdict(c.confirmation) if c.confirmation else None}
                for c in self.candidates
            ],
        }


def layer_relations(stats: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`example_relations` for every feature's top examples of a built layer (`feature_stats` output) and the
    `[d_sae, n_top]` mask of examples that have DFA."""
    idx = stats["index"]
    C, row_len = idx["spec"]["context"], idx["row_len"]
    n_dfa = stats["dfa_pre"].shape[1]
    dest = stats["top_idx"][:, :n_dfa] % row_len
    rel = example_relations(
        stats["dfa_src"][:, :n_dfa].float(), stats["dfa_dist"][:, :n_dfa].float(), stats["dfa_top_src"][:, :n_dfa],
        stats["dfa_src_tok"][:, :n_dfa].long(), stats["dfa_induction"][:, :n_dfa],
        stats["top_tok"][:, :n_dfa, C].long(), dest,
    )
    valid = (stats["top_val"][:, :n_dfa] > 0) & (stats["top_idx"][:, :n_dfa] >= 0)
    return rel, valid


def induction_pair(stats: Mapping[str, Any], feature: int, rel: Mapping[str, torch.Tensor], valid: torch.Tensor) -> tuple[int, int] | None:
    """The most common (current token, top-source token) pair among a feature's induction-like top examples."""
    C = stats["index"]["spec"]["context"]
    sel = (rel["ind"][feature] & valid[feature]).nonzero().flatten().tolist()
    pairs = Counter((int(stats["top_tok"][feature, k, C]), int(stats["dfa_src_tok"][feature, k])) for k in sel)
    return pairs.most_common(1)[0][0] if pairs else None


Confirmer = Callable[[dict[int, tuple[int, int]]], dict[int, Confirmation]]


class LayerRoles:
    """One layer's automatic roles, scored once from its built dashboards (`feature_stats` output).

    Every live feature's scores are computed here, once (only the scores are kept, not the layer's arrays, so an
    engine may hold one per layer). An induction candidate's repeated-random-token test
    (`confirm`, see `confirm_induction`; None: not run, so no feature is induction) runs the first time that
    feature's role is asked for and is kept, so the dashboard, the head survey and the study, asking one object,
    all get the same answer."""

    def __init__(self, directory: Path | None, stats: Mapping[str, Any] | None = None,
                 confirm: Confirmer | None = None) -> None:
        from sae.analysis.dashboards import feature_stats

        stats = stats if stats is not None else feature_stats(directory)
        idx = stats["index"]
        self.model = str(idx["model"])
        self.layer = int(idx["layer"])
        rel, valid = layer_relations(stats)
        self.live: list[int] = (stats["n_fire"] > 0).nonzero().flatten().tolist()
        self.scores = layer_role_scores(rel, valid, self.live)  # every live feature in one pass
        self.candidates = [i for i in self.live if is_induction_candidate(self.scores[i], self.layer)]
        self.pairs = {i: p for i in self.candidates if (p := induction_pair(stats, i, rel, valid)) is not None}
        self._confirm = confirm if can_compose(self.layer) else None
        self.confirmations: dict[int, Confirmation] = {}
        self._tested: set[int] = set()

    def confirm(self, features: Sequence[int] | None = None) -> None:
        """Run the induction test on the candidates among `features` (None: all) not tested yet."""
        if self._confirm is None:
            return
        want = self.candidates if features is None else [f for f in features if f in self.pairs]
        todo = {f: self.pairs[f] for f in want if f in self.pairs and f not in self._tested}
        if todo:
            self.confirmations.update(self._confirm(todo))
            self._tested.update(todo)

    def role(self, feature: int) -> str:
        """The feature's role ("" for a dead feature), its induction test run first when it is a candidate."""
        if feature not in self.scores:
            return ""
        self.confirm([feature])
        c = self.confirmations.get(feature)
        return classify_role(self.scores[feature], self.layer, c.confirmed if c else None)

    def roles(self, features: Sequence[int]) -> dict[int, str]:
        self.confirm(features)
        return {f: self.role(f) for f in features}

    def note(self, features: Sequence[int] | None = None) -> str:
        """How the induction candidates (among `features`; None: all) were tested."""
        cands = self.candidates if features is None else [f for f in self.candidates if f in set(features)]
        which = "" if features is None else " sampled"
        if not can_compose(self.layer):
            return "layer 0: no feature can be induction (its heads cannot compose with an earlier one)"
        if self._confirm is None:
            return f"not run (no model given): {len(cands)}{which} induction candidates left unconfirmed"
        n_ok = sum(bool(self.confirmations.get(f) and self.confirmations[f].confirmed) for f in cands)
        return (f"repeated random tokens: {n_ok} of {len(cands)}{which} induction candidates confirmed "
                f"({CONFIRM_SEQUENCES} sequences each)")

    def report(self) -> RoleReport:
        """Every live feature's role (every candidate tested)."""
        self.confirm()
        out: dict[int, FeatureRole] = {}
        feats: dict[str, list[int]] = {r: [] for r in ROLES}
        for i in self.live:
            role = self.role(i)
            out[i] = FeatureRole(i, role, self.scores[i], i in self.candidates, self.confirmations.get(i))
            feats[role].append(i)
        return RoleReport(
            model=self.model, layer=self.layer, rules=list(RULES), n_live=len(self.live),
            counts={r: len(v) for r, v in feats.items()}, features=feats, confirmation=self.note(),
            candidates=[out[i] for i in self.candidates], roles=out,
        )


def roles_layer(directory: Path | None, stats: Mapping[str, Any] | None = None,
                confirm: Confirmer | None = None) -> RoleReport:
    """Role of every live feature of a built dashboard directory (`LayerRoles(...).report()`).

    confirm: runs the repeated-random-token test on `{feature: (current token, source token)}` (see
    `confirm_induction`); None leaves every induction candidate unconfirmed (so not induction)."""
    return LayerRoles(directory, stats, confirm).report()


def model_confirmer(model: "LoadedModel", sae: "SAE", layer: int, seed: int = CONFIRM_SEED, **kw: Any) -> Confirmer:
    """A `Confirmer` that runs `confirm_induction` on `model` and `sae`."""

    def run(pairs: dict[int, tuple[int, int]]) -> dict[int, Confirmation]:
        return confirm_induction(model, sae, layer, pairs, seed=seed, **kw)

    return run


def agreement(auto: Mapping[int, str], human: Mapping[int, str], roles: Sequence[str] = ROLES) -> dict[str, Any]:
    """How each automatic rule agrees with human labels on the features both labelled.

    For each role: n_auto (features the rule gave it, among the human-labelled), n_human, both, precision
    (both / n_auto), recall (both / n_human). Plus overall accuracy (same label) over the shared features."""
    shared = [f for f in human if f in auto]
    out: dict[str, Any] = {"n": len(shared), "roles": []}
    for r in roles:
        a = {f for f in shared if auto[f] == r}
        h = {f for f in shared if human[f] == r}
        both = len(a & h)
        out["roles"].append({
            "role": r, "n_auto": len(a), "n_human": len(h), "both": both,
            "precision": both / len(a) if a else None, "recall": both / len(h) if h else None,
        })
    out["accuracy"] = sum(auto[f] == human[f] for f in shared) / len(shared) if shared else None
    return out
