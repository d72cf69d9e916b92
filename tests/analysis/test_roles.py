"""Automatic roles on planted attention patterns, the layer-0 rule, the repeated-random-token test, agreement."""

from __future__ import annotations

import pytest
import torch
from support import random_sae

from sae.analysis import roles
from sae.analysis.dashboards import example_dfa

T, H, DH, C = 48, 2, 4, 8


def _tokens() -> torch.Tensor:
    """Distinct tokens 100.. except a planted copy: position 30 repeats the token at position 22."""
    toks = torch.arange(100, 100 + T)
    toks[0] = 0
    toks[30] = toks[22]
    return toks


def _pattern(dest: int, sources: dict[int, float]) -> torch.Tensor:
    """`[H, T, T]`: every row attends to BOS except `dest`, which puts `sources`' weights (both heads alike)."""
    p = torch.zeros(H, T, T)
    p[:, :, 0] = 1.0
    p[:, dest, 0] = 1.0 - sum(sources.values())
    for s, w in sources.items():
        p[:, dest, s] = w
    return p


# feature -> (destination, {source: attention}); all values and encoder weights are positive, so DFA mass follows
# attention exactly
PLANTED = {
    0: ("previous-token", 40, {39: 0.9}),
    1: ("duplicate-token", 30, {22: 0.9}),  # 22 holds the same token as 30
    2: ("induction", 30, {23: 0.9}),  # 23 follows the earlier copy of 30's token
    3: ("short-range context", 40, {36: 0.3, 37: 0.3, 38: 0.3}),
    4: ("long-range context", 40, {5: 0.3, 10: 0.3, 20: 0.3}),
    5: ("other", 40, {30: 0.9}),  # 10 back, no relation: neither near nor far
}


def _stats(layer: int) -> dict:
    """A `feature_stats`-shaped dict for the planted features, their DFA computed by the dashboard build's own
    `example_dfa` from the planted patterns (one top example each)."""
    toks = _tokens()
    d = len(PLANTED)
    v = torch.rand(1, T, H, DH) + 0.1
    w_enc = torch.rand(H, DH, d) + 0.1
    fields: dict[str, list] = {k: [] for k in ("dfa_src", "dfa_dist", "dfa_top_src", "dfa_src_tok", "dfa_prev_tok",
                                               "dfa_induction", "dfa_pre", "top_tok", "top_idx")}
    for f, (_, dest, sources) in PLANTED.items():
        pat = _pattern(dest, sources).unsqueeze(0)
        got = example_dfa(pat, v, toks.unsqueeze(0), w_enc, torch.zeros(d), torch.tensor([0]), torch.tensor([dest]),
                          torch.tensor([f]), C)
        for k in ("dfa_src", "dfa_dist", "dfa_top_src", "dfa_src_tok", "dfa_prev_tok", "dfa_induction", "dfa_pre"):
            fields[k].append(got[k])
        win = torch.tensor([int(toks[t]) if 0 <= t < T else -1 for t in range(dest - C, dest + C + 1)])
        fields["top_tok"].append(win.unsqueeze(0))
        fields["top_idx"].append(torch.tensor([dest]))
    stats = {k: torch.stack(v) for k, v in fields.items()}
    stats["top_val"] = torch.ones(d, 1)
    stats["n_fire"] = torch.ones(d, dtype=torch.long)
    stats["index"] = {"model": "planted", "layer": layer, "row_len": T, "spec": {"context": C}}
    return stats


def _all_confirmed(pairs):
    return {f: roles.Confirmation(f, ("a", "b"), 0.0, 1.0, 1.0, 1.0, True) for f in pairs}


def test_planted_patterns_get_their_roles():
    rep = roles.roles_layer(None, stats=_stats(layer=1), confirm=_all_confirmed)
    got = rep.role_of()
    assert got == {f: role for f, (role, _, _) in PLANTED.items()}
    assert [c.feature for c in rep.candidates] == [2]
    assert rep.rules == roles.RULES and rep.n_live == len(PLANTED)
    s = rep.roles[0].scores
    assert s.previous == pytest.approx(1.0) and s.duplicate == 0 and s.induction == 0


def test_planted_pair_is_read_from_the_examples():
    stats = _stats(layer=1)
    rel, valid = roles.layer_relations(stats)
    toks = _tokens()
    assert roles.induction_pair(stats, 2, rel, valid) == (int(toks[30]), int(toks[23]))
    assert roles.induction_pair(stats, 0, rel, valid) is None


def test_layer_zero_is_never_induction():
    rep = roles.roles_layer(None, stats=_stats(layer=0), confirm=_all_confirmed)
    assert rep.role_of()[2] != "induction" and rep.counts["induction"] == 0 and "layer 0" in rep.confirmation
    sure = roles.RoleScores(previous=0.0, duplicate=0.0, induction=1.0, near=1.0, far=0.0, n_examples=20)
    assert roles.classify_role(sure, 0, confirmed=True) != "induction"
    assert roles.classify_role(sure, 1, confirmed=True) == "induction"
    assert not roles.is_induction_candidate(sure, 0)


def test_unconfirmed_candidates_are_not_induction():
    rep = roles.roles_layer(None, stats=_stats(layer=2), confirm=None)
    assert rep.role_of()[2] != "induction" and "unconfirmed" in rep.confirmation

    def refuse(pairs):
        return {f: roles.Confirmation(f, ("a", "b"), 1.0, 0.5, 0.0, 0.0, False) for f in pairs}

    rep = roles.roles_layer(None, stats=_stats(layer=2), confirm=refuse)
    assert rep.role_of()[2] != "induction" and rep.candidates[0].confirmation.confirmed is False


def test_example_relations_by_hand():
    # one example, window C=3 (sources t-3..t), dest t=10
    dfa_src = torch.tensor([[1.0, -2.0, 3.0, 0.5]])  # distance 3, 2, 1, 0
    dist = torch.tensor([[0.5, 3.0, 1.0, 4.5]])  # total positive mass 9
    rel = roles.example_relations(dfa_src, dist, torch.tensor([9]), torch.tensor([7]), torch.tensor([0]),
                                  torch.tensor([7]), torch.tensor([10]))
    assert float(rel["prev_share"]) == pytest.approx(3.0 / 9.0)
    assert not bool(rel["dup"]) and not bool(rel["ind"])  # top source 9 = t-1: not a duplicate at least 2 back
    rel = roles.example_relations(dfa_src, dist, torch.tensor([4]), torch.tensor([7]), torch.tensor([1]),
                                  torch.tensor([7]), torch.tensor([10]))
    assert bool(rel["dup"]) and bool(rel["ind"])  # "7 7 ... 7": both relations hold (ind: the scan's flag)
    # t-1 is BOS: no previous-token share; no positive mass: no relation, whatever the flag says
    rel = roles.example_relations(dfa_src, torch.zeros(1, 4), torch.tensor([-1]), torch.tensor([-1]),
                                  torch.tensor([1]), torch.tensor([7]), torch.tensor([1]))
    assert float(rel["prev_share"]) == 0.0 and not bool(rel["dup"]) and not bool(rel["ind"])
    rel = roles.example_relations(dfa_src, dist, torch.tensor([-1]), torch.tensor([-1]), torch.tensor([0]),
                                  torch.tensor([7]), torch.tensor([1]))
    assert float(rel["prev_share"]) == 0.0 and not bool(rel["dup"]) and not bool(rel["ind"])


def test_repeated_pair_sequences_token_by_token():
    pool = torch.arange(1, 200)
    seqs = roles.repeated_pair_sequences(pool, (7, 9), 10, 12, torch.Generator().manual_seed(0))
    assert seqs.tokens.shape == (10, 25)
    firsts = set()
    for row, a, b in zip(seqs.tokens.tolist(), seqs.first.tolist(), seqs.second.tolist()):
        assert row[1:13] == row[13:25]  # the second half repeats the first
        assert (row[a], row[a + 1]) == (7, 9) and b == a + 12 and row[b] == 7 and row[b + 1] == 9
        assert len(set(row[1:13])) == 12  # distinct in each half
        firsts.add(a)
    assert len(firsts) > 3


def test_confirm_rule_by_hand():
    ok, share = roles.confirm_from_measurements(
        torch.tensor([0.0, 1.0, 0.0, 2.0]), torch.tensor([1.0, 0.5, 3.0, 3.0]), torch.tensor([1, 1, 0, 1])
    )
    assert share == 0.5 and ok  # sequences 0 and 3 show both
    ok, share = roles.confirm_from_measurements(torch.zeros(4), torch.zeros(4), torch.ones(4))
    assert share == 0.0 and not ok  # never fires: not confirmed


def test_confirm_induction_matches_a_brute_force_loop(tiny_either):
    tiny_model = tiny_either  # lean and bridge
    layer = 1
    sae = random_sae(tiny_model, layer, d_sae=16, seed=5)
    pairs = {3: (20, 21), 11: (40, 41)}
    got = roles.confirm_induction(tiny_model, sae, layer, pairs, n=3, half_len=6, seed=2, batch_size=4)
    from sae.engine.activations import usable_token_ids

    pool = usable_token_ids(tiny_model)
    b_v = tiny_model.z_offset(layer)
    w = sae.W_enc.detach().view(tiny_model.n_heads, tiny_model.d_head, -1)
    for f, pair in pairs.items():
        seqs = roles.repeated_pair_sequences(pool, pair, 3, 6, torch.Generator().manual_seed(2 * 1_000_003 + f))
        seqs.tokens[:, 0] = tiny_model.bos_token_id
        with torch.no_grad():
            _, cache = tiny_model.bridge.run_with_cache(seqs.tokens)
        z = cache[f"blocks.{layer}.attn.hook_z"] - b_v
        v = cache[f"blocks.{layer}.attn.hook_v"] - b_v
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]
        firsts, repeats, hits = [], [], []
        for r in range(3):
            a, b = int(seqs.first[r]), int(seqs.second[r])
            with torch.no_grad():
                acts = sae.encode(z[r, [a, b]].flatten(-2))
            firsts.append(float(acts[0, f]))
            repeats.append(float(acts[1, f]))
            best, best_s = -float("inf"), -1
            for s in range(1, b + 1):
                val = sum(float(pat[r, h, b, s]) * float(v[r, s, h] @ w[h, :, f]) for h in range(tiny_model.n_heads))
                if val > best:
                    best, best_s = val, s
            hits.append(best_s == a + 1 and best > 0)
        c = got[f]
        assert c.act_first == pytest.approx(sum(firsts) / 3, abs=1e-5)
        assert c.act_repeat == pytest.approx(sum(repeats) / 3, abs=1e-5)
        assert c.top_source_hits == pytest.approx(sum(hits) / 3)
        shows = [rp > fi and h for fi, rp, h in zip(firsts, repeats, hits)]
        assert c.share == pytest.approx(sum(shows) / 3) and c.confirmed == (sum(shows) / 3 >= 0.5)


def test_agreement_by_hand():
    auto = {1: "induction", 2: "induction", 3: "previous-token", 4: "other", 9: "other"}
    human = {1: "induction", 2: "duplicate-token", 3: "previous-token", 4: "previous-token"}
    a = roles.agreement(auto, human)
    assert a["n"] == 4 and a["accuracy"] == pytest.approx(2 / 4)
    by = {r["role"]: r for r in a["roles"]}
    assert by["induction"] == {"role": "induction", "n_auto": 2, "n_human": 1, "both": 1, "precision": 0.5, "recall": 1.0}
    assert by["previous-token"]["precision"] == 1.0 and by["previous-token"]["recall"] == 0.5
    assert by["other"]["precision"] == 0.0 and by["other"]["recall"] is None


def test_layer_roles_tests_each_candidate_once_and_answers_alike():
    calls: list[dict] = []

    def confirm(pairs):
        calls.append(dict(pairs))
        return _all_confirmed(pairs)

    lr = roles.LayerRoles(None, stats=_stats(layer=1), confirm=confirm)
    assert lr.role(0) == "previous-token" and calls == []  # not a candidate: no test
    assert lr.role(2) == "induction" and [set(c) for c in calls] == [{2}]
    assert lr.roles([2, 1]) == {2: "induction", 1: "duplicate-token"} and len(calls) == 1
    rep = lr.report()
    assert len(calls) == 1 and rep.role_of() == {f: role for f, (role, _, _) in PLANTED.items()}
    assert lr.role(99) == ""  # not live
    assert "1 of 1 induction candidates confirmed" in lr.note()
