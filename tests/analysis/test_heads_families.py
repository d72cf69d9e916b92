"""The paper families as a mapping of the roles, checked against the paper's definitions on constructed cases, the source facts they read, and the head survey's verdicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from support import TINY_TEXT, random_sae

from sae.analysis.dashboards import DashboardSpec, build_dashboards, distance_bin, source_facts
from sae.analysis import roles
from sae.analysis.families import FAMILIES, FAMILY_OF_ROLE, classify_layer, paper_family, roles_of
from sae.analysis.roles import mass_at_distances
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


# The paper's family definitions, quoted from /work/shared/PAPER.md ("What the paper does").
PAPER_LINE = ('- Finds feature families: **induction** ("X is next by induction"), **short-range context**, '
              '**long-range context**;')
PAPER_MOTIFS_LINE = ('  in GPT-2 Small also previous-token, successor, duplicate-token, copy-suppression and '
                     '"preposition mover" motifs.')


def test_paper_lines_are_quoted_from_the_notes():
    notes = Path("/work/shared/PAPER.md")
    if not notes.is_file():
        pytest.skip("the research notes are not on this machine")
    text = notes.read_text()
    assert PAPER_LINE in text and PAPER_MOTIFS_LINE in text


def _paper_family_by_hand(per_src: list[float], tokens: list[int], dest: int) -> str:
    """The paper's families as its definitions read, computed by hand from one example's DFA by source (BOS = 0 left
    out): induction when the top source comes right after an earlier copy of the current token (at least 2 back),
    else short- / long-range context when at least half the positive mass is at most 6 / at least 15 tokens back."""
    usable = [(s, v) for s, v in enumerate(per_src[: dest + 1]) if s >= 1]
    top_s, top_v = max(usable, key=lambda x: x[1])
    if top_v > 0 and 2 <= top_s <= dest - 2 and tokens[top_s - 1] == tokens[dest]:
        return "induction"
    pos = sum(v for _, v in usable if v > 0)
    near = sum(v for s, v in usable if v > 0 and dest - s <= 6)
    far = sum(v for s, v in usable if v > 0 and dest - s >= 15)
    if pos > 0 and near / pos >= 0.5:
        return "short-range context"
    if pos > 0 and far / pos >= 0.5:
        return "long-range context"
    return "other"


def _role(per_src: list[float], tokens: list[int], dest: int) -> str:
    """The automatic role of a feature whose top examples all look like this one (layer 1, induction confirmed)."""
    f = _facts(per_src, tokens, dest)
    C = dest
    win = torch.tensor([per_src[: dest + 1]])  # sources t-C .. t
    rel = roles.example_relations(win, f["dfa_dist"], f["dfa_top_src"], f["dfa_src_tok"].long(), f["dfa_induction"],
                                  torch.tensor([tokens[dest]]), torch.tensor([dest]))
    assert win.shape[-1] == C + 1
    return roles.classify_role(roles.role_scores(rel, torch.tensor([True])), layer=1, confirmed=True)


def test_family_mapping_agrees_with_the_paper_definitions():
    names = re.findall(r"\*\*([^*]+)\*\*", PAPER_LINE)
    assert set(FAMILIES) == set(names) | {"other"} and set(FAMILY_OF_ROLE) == set(roles.ROLES)
    toks = list(range(100, 140))
    toks[0] = 0
    rep = list(toks)
    rep[30] = rep[8]  # the token at 30 has an earlier copy at 8; 9 follows it
    cases = {  # role -> (per_src, tokens, dest)
        "previous-token": ([0.0] * 30 + [3.0, 0.2], toks, 31),
        "short-range context": ([0.0] * 26 + [1.0, 1.0, 1.0, 0.0, 0.0, 0.2], toks, 31),
        "long-range context": ([0.0, 0.0, 1.0, 0.0, 0.0, 1.5, 0.0, 1.0] + [0.0] * 24, toks, 31),
        "induction": ([0.0] * 9 + [3.0] + [0.0] * 21, rep, 30),
        "other": ([0.0] * 20 + [3.0] + [0.0] * 10, toks, 30),  # 10 back: neither a few nor far
    }
    for role, (per_src, tokens, dest) in cases.items():
        assert _role(per_src, tokens, dest) == role
        assert FAMILY_OF_ROLE[role] == _paper_family_by_hand(per_src, tokens, dest), role
    # duplicate-token: the paper names it beside the families (a GPT-2 Small motif), so it maps to no family
    assert "duplicate-token" in PAPER_MOTIFS_LINE and "duplicate-token" not in names
    assert _role([0.0] * 8 + [3.0] + [0.0] * 22, rep, 30) == "duplicate-token"
    assert FAMILY_OF_ROLE["duplicate-token"] == "other"
    assert roles_of("short-range context") == ["previous-token", "short-range context"]
    assert paper_family("previous-token") == "short-range context" and paper_family("successor") == ""


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
    assert rep.role_rules == roles.RULES and rep.mapping == FAMILY_OF_ROLE
    role_of = roles.roles_layer(built[2]).role_of()
    assert rep.family_of() == {f: FAMILY_OF_ROLE[r] for f, r in role_of.items()}
    for fam, exs in rep.examples.items():
        assert len(exs) <= 3 and all(e.feature in rep.features[fam] and FAMILY_OF_ROLE[e.role] == fam for e in exs)
    survey = survey_heads(built, model="tiny")
    assert [lh.layer for lh in survey.layers] == [0, 2]
    for lh in survey.layers:
        assert len(lh.heads) == 4
        for h in lh.heads:
            shares = [f.decoder_share for f in h.top_by_decoder]
            assert shares == sorted(shares, reverse=True) and len(shares) <= 10
            assert sum(h.roles.values()) == len(h.top_by_decoder)
            if lh.layer == 2:
                assert all(f.role == role_of[f.id] for f in h.top_by_decoder)
        poly = sum(h.verdict == "polysemantic" for h in lh.heads) / 4
        assert lh.polysemantic_fraction == poly
    d = survey.to_dict()
    assert "criterion" in d and "top-10" in d["criterion"] and "role_rules" in d
