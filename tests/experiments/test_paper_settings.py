"""The paper settings rebuild what the paper's own code builds, token for token, on the embedded default.

The fixtures in tests/reference/fixtures/paper/ were written by tests/reference/paper_settings.py, which runs the
paper authors' functions (ckkissane/attention-output-saes 03b2bc2) in the side environment; nothing of attnscope
made them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae.experiments import induction, ioi, ioi_data

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "paper"


@pytest.fixture(scope="module")
def default_model():
    from sae.zoo import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def paper_ioi() -> dict:
    return json.loads((FIXTURES / "paper_ioi.json").read_text())


def test_paper_names_are_the_papers_list_cut_to_single_tokens(default_model, paper_ioi):
    assert len(ioi_data.PAPER_NAMES) == paper_ioi["names_all"] == 109
    assert ioi_data.single_token_names(default_model.encode, ioi_data.PAPER_NAMES) == paper_ioi["names"]
    assert (ioi_data.PAPER_PREFIX, ioi_data.PAPER_FILLER) == (paper_ioi["prepend_text"], paper_ioi["filler_text"])


def test_paper_ioi_prompts_token_by_token(default_model, paper_ioi):
    data = ioi.build_dataset(default_model, paper_ioi["n"], seed=paper_ioi["seed"], bos=False, setting="paper")
    assert (data.split, data.bos, data.setting, data.names_source) == ("mixed", False, "paper", "paper")
    for i, ref in enumerate(paper_ioi["prompts"]):
        p = data.prompts[i]
        assert (p.full_text, p.io, p.s, p.order) == (ref["text"], ref["IO"], ref["S"], ref["order"])
        end = int(data.end[i])
        # the paper's tokens hold the answer after END; attnscope's prompt stops at END
        assert data.tokens[i, : end + 1].tolist() == ref["tokens"][:-1]
        assert ref["tokens"][-1] == int(data.io_tok[i])
        w = ref["word_idx"]
        assert (int(data.io[i]), int(data.s1[i]), int(data.s2[i]), end) == (w["IO"], w["S1"], w["S2"], w["end"])


def test_paper_combined_corruption_token_by_token(default_model, paper_ioi):
    enc = default_model.encode
    data = ioi.build_dataset(default_model, paper_ioi["n"], seed=paper_ioi["seed"], bos=False, setting="paper")
    same_names = 0
    for i, ref in enumerate(paper_ioi["prompts"]):
        c, d = ref["flipped_IO"], ref["flipped_S"]  # the names the paper drew (hash-order dependent, see ioi_data)
        same_names += c == d
        got = ioi_data.paper_combined(data.prompts[i], c, d, enc, None)
        row = ref["corrupted_tokens"]
        assert got.ids == row[: len(got.ids)]
        assert row[len(got.ids):] == enc(" " + ref["IO"])  # the paper keeps the clean answer as the last word
        assert ioi_data.paper_punct_index(ref["tokens"], enc, ref["text"]) == ref["word_idx"]["punct"]
        # S2 moved by the paper's corr_offset (prefix + filler); IO and S1 by the prefix alone
        assert got.positions.s2 == ref["word_idx"]["S2"] + paper_ioi["corr_offset"]
        assert got.ids[got.positions.s2] == enc(" " + d)[0] and got.ids[got.positions.io] == enc(" " + c)[0]
        k = len(enc(paper_ioi["prepend_text"]))
        assert (got.positions.io, got.positions.s1) == (ref["word_idx"]["IO"] + k, ref["word_idx"]["S1"] + k)
    assert same_names > 0  # the paper draws C and D independently: C = D happens (27 names here)


def test_paper_name_draw_is_independent_and_reproducible(default_model):
    data = ioi.build_dataset(default_model, 300, bos=False, setting="paper", seed=1)
    a = ioi_data.paper_new_names(data.prompts, data.names, data.seed)
    assert a == ioi_data.paper_new_names(data.prompts, data.names, data.seed)
    assert all({c, d}.isdisjoint({p.io, p.s}) for (c, d), p in zip(a, data.prompts))
    same = sum(c == d for c, d in a)
    assert 2 <= same <= 30  # ~ 300 / 27 when C and D are independent


def test_paper_noising_runs_the_papers_combined_corruption(default_model):
    data = ioi.build_dataset(default_model, 6, bos=False, setting="paper")
    r = ioi.run_noising(default_model, data, [1], ["combined"], batch_size=6)
    assert r.settings.setting == "paper" and r.settings.corruption_text == ioi_data.PAPER_COMBINED
    assert "It was a nice day." in r.corruptions["combined"] and r.settings.split == "mixed"
    corrupted = ioi.corrupted_data(default_model, data, "combined")
    new = ioi_data.paper_new_names(data.prompts, data.names, data.seed)
    for i, (c, d) in enumerate(new):
        pc = ioi_data.paper_combined(data.prompts[i], c, d, default_model.encode, None)
        assert corrupted.tokens[i, : len(pc.ids)].tolist() == pc.ids and int(corrupted.s2[i]) == pc.positions.s2


# ---- synthetic induction ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_induction() -> dict:
    path = FIXTURES / "paper_induction.json"
    if not path.exists():
        pytest.skip("paper_induction.json not generated (needs TransformerLens 3 in the side environment)")
    return json.loads(path.read_text())


def test_paper_induction_sequences_token_by_token(default_model, paper_induction):
    n, seq_len = paper_induction["n_per_length"], paper_induction["seq_len"]
    gen = torch.Generator().manual_seed(paper_induction["seed"])
    import random

    rng = random.Random(paper_induction["seed"])
    got = []
    for p in paper_induction["prefix_lengths"]:
        b = induction.paper_batch(default_model.d_vocab, default_model.bos_token_id, n, p, seq_len, gen, rng)
        got += b.tokens.tolist()
        # the query is the repeat's last token, the key the token after the first copy
        for row, q, k in zip(b.tokens.tolist(), b.query.tolist(), b.key.tolist()):
            assert row[q - p + 1 : q + 1] == row[k - p : k] and 1 <= k - p <= seq_len - 30
    assert got == paper_induction["sequences"]


def test_paper_induction_scores_match_the_papers(default_model, paper_induction):
    res = induction.synthetic_induction(
        default_model, n=paper_induction["n_per_length"], seq_len=paper_induction["seq_len"],
        seed=paper_induction["seed"], sampling="paper", batch_size=paper_induction["n_per_length"],
    )
    assert res.sampling == "paper" and "paper" in res.design
    layer = paper_induction["layer"]
    for h in res.heads:
        if h.layer == layer:
            for p, want in paper_induction["scores"][str(h.head)].items():
                assert h.scores[p] == pytest.approx(want, abs=2e-4), (h.head, p)
    assert res.mean_query_pos > 80  # the paper's sampling puts the query late (attnscope's: ~69)


# ---- training: the paper preset's optimiser and b_dec start ------------------------------------------------------


def test_paper_preset_uses_train_py_betas_and_offers_the_geometric_median_start():
    from sae.engine.training.config import PRESETS, TrainConfig

    assert (PRESETS["paper"]["beta1"], PRESETS["paper"]["beta2"]) == (0.0, 0.9999)  # the authors' train.py
    assert PRESETS["paper"]["b_dec_init"] == "zeros"
    assert TrainConfig(layers=[0], b_dec_init="geometric-median").b_dec_init == "geometric-median"


def test_geometric_median_minimises_the_summed_distance():
    from sae.engine.training.loop import geometric_median

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])
    x[:20] += 40.0  # outliers pull the mean, barely the median
    m = geometric_median(x)

    def cost(p: torch.Tensor) -> float:
        return float((x.double() - p.double()).norm(dim=1).sum())

    # optimality by hand: the unit vectors from m to the points sum to ~0, and no nudge lowers the cost
    unit = (x.double() - m.double()) / (x.double() - m.double()).norm(dim=1, keepdim=True)
    assert float(unit.sum(0).norm()) < 1e-3
    for d in torch.eye(5):
        assert cost(m) <= cost(m + 0.01 * d) and cost(m) <= cost(m - 0.01 * d)
    assert cost(m) < cost(x.mean(0))
    # one dimension: the median
    line = torch.tensor([[0.0], [1.0], [2.0], [10.0], [50.0]])
    assert float(geometric_median(line)) == pytest.approx(2.0, abs=1e-3)


def test_training_starts_b_dec_at_a_geometric_median(tiny_model, rows, tmp_path):
    from sae.engine.training.config import TrainConfig
    from sae.engine.training.loop import train_saes

    kw = dict(layers=[0], architecture="standard", normalize_activations="none", d_sae=32, batch_size=64,
              context_size=rows.shape[1], total_tokens=64, rows_per_pass=4, buffer_batches=4, warmup_steps=1,
              checkpoint_every=0, log_every=1, lr=1e-12, l1_coeff=0.01)
    zero = train_saes(tiny_model, rows, TrainConfig(**kw, b_dec_init="zeros"), tmp_path / "z")[0]
    gm = train_saes(tiny_model, rows, TrainConfig(**kw, b_dec_init="geometric-median"), tmp_path / "g")[0]
    assert float(zero.b_dec.detach().abs().max()) < 1e-6 < float(gm.b_dec.detach().norm())


# ---- real-text induction: the paper's first event per row with fuzzy matching ------------------------------------


def test_fuzzy_match_variants_are_the_papers(default_model, paper_induction):
    rt = paper_induction["real_text"]
    tok = default_model.tokenizer
    fuzzy = induction.FuzzyMatch(lambda t: tok.decode([t]), default_model.encode)
    for t, paper in enumerate(rt["variants"]):  # with space, without space, capitalised, lower-cased
        assert fuzzy.variants(t) == frozenset([t, *paper]), t


def test_first_fuzzy_real_text_matches_the_papers_check_long_prefix_by_attn(default_model, paper_induction):
    rt = paper_induction["real_text"]
    rows = torch.tensor(rt["rows"])
    res = induction.real_text_induction(default_model, [], rows=rows, threshold=rt["threshold"], matching="first-fuzzy")
    assert res.matching == "first-fuzzy"
    for h in res.heads:
        if h.layer != rt["layer"]:
            continue
        lens = rt["heads"][str(h.head)]["prefix_lens"]
        hist = {k: 0 for k in ("0", "1", "2", "3", "4+")}
        for m in lens:
            hist[str(m) if m < 4 else "4+"] += 1
        assert h.n_events == len(lens) and h.prefix_hist == hist, h.head
    every = induction.real_text_induction(default_model, [], rows=rows, threshold=rt["threshold"])
    assert sum(h.n_events for h in every.heads) > sum(h.n_events for h in res.heads)  # every event, not one per row


def test_induction_proxy_is_the_papers_create_better_proxy_mask(default_model, paper_induction):
    from sae.analysis import proxy as px
    from sae.analysis.fuzzy import FuzzyMatch

    rt, ref = paper_induction["real_text"], paper_induction["proxy"]
    tok = default_model.tokenizer
    fuzzy = FuzzyMatch(lambda t: tok.decode([t]), default_model.encode)
    got = px.induction_mask(rt["rows"], ref["target"], lambda t: sorted(fuzzy.variants(t)))
    assert got.int().tolist() == ref["mask"] and got.sum() > 10
