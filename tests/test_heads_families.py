"""Family rules on constructed cases, the source facts they read, and the head survey's verdicts."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEXT, random_sae

from sae.analysis.dashboards import DashboardSpec, build_dashboards, distance_bin, source_facts
from sae.analysis.families import FAMILIES, RULES, classify, classify_layer, family_scores, mass_at_distances
from sae.analysis.heads import dfa_head_shares, survey_heads, verdict


def _facts(per_src: list[float], tokens: list[int], dest: int) -> dict[str, torch.Tensor]:
    return source_facts(torch.tensor([per_src]), torch.tensor([tokens]), torch.tensor([dest]))


def test_induction_is_detected_from_tokens():
    # BOS A B C D A : at dest 5 (the second A) the top source is B (position 2), preceded by a copy of A
    tokens = [0, 7, 8, 9, 10, 7]
    f = _facts([5.0, 0.1, 2.0, 0.2, 0.1, 0.3], tokens, 5)  # BOS has the most DFA but is left out
    assert int(f["dfa_top_src"]) == 2 and int(f["dfa_induction"]) == 1
    assert int(f["dfa_prev_tok"]) == 7 and int(f["dfa_src_tok"]) == 8
    # same DFA, but the token before the source is not a copy of the current token
    g = _facts([5.0, 0.1, 2.0, 0.2, 0.1, 0.3], [0, 6, 8, 9, 10, 7], 5)
    assert int(g["dfa_induction"]) == 0
    # previous-token attention on "x . y ." is not induction, though the token before the source copies dest
    p = _facts([0.0, 0.1, 0.2, 3.0, 0.1], [0, 11, 12, 13, 12], 4)
    assert int(p["dfa_top_src"]) == 3 and int(p["dfa_prev_tok"]) == 12 and int(p["dfa_induction"]) == 0
    # a repeated token right before dest is not induction (src == dest)
    h = _facts([0.0, 0.0, 0.0, 0.0, 0.1, 3.0], [0, 1, 2, 3, 7, 7], 5)
    assert int(h["dfa_top_src"]) == 5 and int(h["dfa_induction"]) == 0


def test_distance_mass_bins():
    per_src = [9.0] + [0.0] * 40
    per_src[40] = 1.0  # distance 0
    per_src[38] = 2.0  # distance 2
    per_src[20] = 4.0  # distance 20
    per_src[30] = -5.0  # negative: not mass
    f = _facts(per_src, list(range(41)), 40)
    hist = f["dfa_dist"][0]
    assert float(hist.sum()) == 7.0
    assert float(hist[int(distance_bin(torch.tensor(0)))]) == 1.0
    assert float(hist[int(distance_bin(torch.tensor(2)))]) == 2.0
    assert float(hist[int(distance_bin(torch.tensor(20)))]) == 4.0
    torch.testing.assert_close(mass_at_distances(per_src, 40), hist)


def _case(per_srcs: list[tuple[list[float], int]], induction: list[int]) -> str:
    mass = torch.stack([mass_at_distances(p, d) for p, d in per_srcs])
    return classify(family_scores(torch.tensor(induction), mass))


def test_family_rules_on_constructed_cases():
    near = ([0.0] * 30 + [0.2, 3.0], 31)  # mass 1 and 0 tokens back
    far = ([0.0, 3.0] + [0.0] * 29 + [0.2], 31)  # mass 30 tokens back
    mid = ([0.0] * 20 + [3.0] + [0.0] * 11, 31)  # 11 back: neither a few nor far
    assert _case([near, near, far], [1, 1, 0]) == "induction"  # induction wins over distance
    assert _case([near, near, far], [0, 0, 0]) == "short-range context"
    assert _case([far, far, near], [1, 0, 0]) == "long-range context"
    assert _case([mid, mid], [0, 0]) == "other"
    assert _case([([0.0] * 32, 31)], [0]) == "other"  # no positive source DFA
    assert classify(family_scores(torch.zeros(0), torch.zeros(0, 6))) == "other"
    assert len(RULES) == 4 and all(any(f in r for r in RULES) for f in FAMILIES)


def test_verdict_and_dfa_shares():
    assert verdict(["induction"] * 10) == ("monosemantic", "induction")
    assert verdict(["induction"] * 9 + ["other"])[0] == "polysemantic"
    assert verdict(["induction"] * 9 + ["other"], agree=0.9)[0] == "monosemantic"
    assert verdict(["other"] * 10)[0] == "polysemantic"
    dfa = torch.tensor([[[1.0, -1.0, 3.0], [1.0, 0.0, 0.0]]])  # one feature, two examples, three heads
    s = dfa_head_shares(dfa, torch.tensor([[True, True]]))
    torch.testing.assert_close(s, torch.tensor([[2 / 5, 0.0, 3 / 5]]))
    s = dfa_head_shares(dfa, torch.tensor([[False, True]]))
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0, 0.0]]))


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    docs = [TINY_TEXT[i : i + 400] for i in range(0, 4000, 400)]
    spec = DashboardSpec(n_tokens=32 * 8, context=3, n_top=5, n_samples=4, n_dfa=2, context_size=32, n_logits=3)
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for layer in (0, 2):
        sae = random_sae(tiny_model, layer, d_sae=16, seed=20 + layer)
        out[layer] = build_dashboards(tiny_model, sae, layer, spec, docs=docs, directory=root / f"layer-{layer}").directory
    return out


def test_layer_families_and_survey_are_consistent(built):
    rep = classify_layer(built[2])
    assert sum(rep.counts.values()) == rep.n_live > 0
    assert rep.rules == RULES
    for fam, exs in rep.examples.items():
        assert len(exs) <= 3 and all(e.feature in rep.features[fam] for e in exs)
    survey = survey_heads(built, model="tiny")
    assert [lh.layer for lh in survey.layers] == [0, 2]
    for lh in survey.layers:
        assert len(lh.heads) == 4
        for h in lh.heads:
            shares = [f.decoder_share for f in h.top_by_decoder]
            assert shares == sorted(shares, reverse=True) and len(shares) <= 10
            assert sum(h.families.values()) == len(h.top_by_decoder)
        poly = sum(h.verdict == "polysemantic" for h in lh.heads) / 4
        assert lh.polysemantic_fraction == poly
    d = survey.to_dict()
    assert "criterion" in d and "top-10" in d["criterion"]
