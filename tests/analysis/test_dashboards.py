"""Feature dashboards against a brute-force scan of a small corpus; resuming; loading; logit effects by hand."""

from __future__ import annotations

import time

import pytest
import torch
from support import TINY_TEXT, random_sae, torch_layer_norm
from safetensors.torch import load_file

from sae.analysis import dashboards as dash
from sae.analysis.dashboards.scan import _merge_slots
from sae.engine.jobs import CancelToken, Cancelled, Progress
from sae.analysis.dashboards import DashboardError, DashboardSpec, build_dashboards, heldout_rows, read_dashboard

LAYER = 1
DOCS = [TINY_TEXT[i : i + 300] for i in range(0, 3000, 300)]


def _spec() -> DashboardSpec:
    return DashboardSpec(n_tokens=32 * 10, context=3, n_top=5, n_samples=8, n_dfa=2, context_size=32, n_logits=4)


@pytest.fixture(scope="module")
def sae(tiny_model):
    s = random_sae(tiny_model, LAYER, d_sae=24, seed=5)
    with torch.no_grad():
        s.b_enc -= 0.1  # sparser, so thresholds and empty slots are exercised
    return s


@pytest.fixture(scope="module")
def built(tiny_model, sae, tmp_path_factory):
    d = tmp_path_factory.mktemp("dash") / "layer-1"
    res = build_dashboards(tiny_model, sae, LAYER, _spec(), docs=DOCS, directory=d, batch_rows=3)
    assert res.status == "built"
    return d


@pytest.fixture(scope="module")
def brute(tiny_model, sae):
    rows = heldout_rows(tiny_model, _spec().n_tokens, 32, DOCS)
    z = tiny_model.capture_z(rows, [LAYER])[LAYER]
    with torch.no_grad():
        pre = sae.encode_pre(z)
        acts = sae.activation(pre)
    acts[:, 0] = 0
    return rows, acts, pre


def test_top_examples_match_brute_force(tiny_model, sae, built, brute):
    rows, acts, _ = brute
    R, T, d = acts.shape
    assert R == 10
    flat = acts.reshape(-1, d)
    n_live = 0
    for f in range(d):
        board = read_dashboard(built, f)
        expected = flat[:, f].topk(5).values
        expected = expected[expected > 0]
        got = torch.tensor([e.act for e in board.top])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        for e in board.top:
            assert abs(float(acts[e.row, e.pos, f]) - e.act) < 1e-5
            lo, hi = max(0, e.pos - 3), min(T, e.pos + 4)
            assert e.tokens == tiny_model.token_strs(rows[e.row, lo:hi])
            assert e.center == e.pos - lo
            torch.testing.assert_close(torch.tensor(e.acts), acts[e.row, lo:hi, f], atol=2e-3, rtol=2e-3)  # fp16
        n_fire = int((acts[:, :, f] > 0).sum())
        assert abs(board.density - n_fire / (R * (T - 1))) < 1e-9
        assert sum(board.histogram["counts"]) == n_fire
        if n_fire:
            assert abs(board.mean_act - float(acts[:, :, f][acts[:, :, f] > 0].mean())) < 1e-4
            n_live += 1
        # quantile samples are real firings, ordered from the strongest bin down
        sampled = [e for b in board.quantiles for e in b.examples]
        assert len(sampled) <= 8 and (len(sampled) > 0) == (n_fire > 0)
        for e in sampled:
            assert abs(float(acts[e.row, e.pos, f]) - e.act) < 1e-5
        assert abs(sum(b.share for b in board.quantiles) - (1.0 if n_fire else 0.0)) < 1e-9
    assert 3 < n_live < d


def test_dfa_of_top_examples_is_exact(sae, built, brute):
    _, _, pre = brute
    checked = 0
    for f in range(sae.cfg.d_sae):
        board = read_dashboard(built, f)
        for x in board.dfa:
            e = board.top[x.example]
            assert abs(x.pre_act - float(pre[e.row, e.pos, f])) < 1e-4
            assert abs(sum(x.dfa_src) + x.dfa_earlier + x.dfa_bias - x.pre_act) < 1e-4
            assert abs(sum(x.dfa_heads) + x.dfa_bias - x.pre_act) < 1e-4
            assert len(x.src_tokens) == len(x.dfa_src) == e.center + 1
            checked += 1
    assert checked > 5


def test_batch_by_batch_build_matches_the_folded_one_and_dfa_by_head_is_z_times_w_enc(tiny_model, sae, built, tmp_path):
    """`built` folds all its model batches into one update (they fit in `fold_bytes`); a build with no room to
    fold (one update per batch, as before folding) writes the same file, DFA to float rounding. Each top
    example's DFA of head h is, by hand, z[row, pos, head h] . W_enc[head h rows, f] (z from a plain capture)."""
    d = tmp_path / "one-by-one"
    build_dashboards(tiny_model, sae, LAYER, _spec(), docs=DOCS, directory=d, batch_rows=3, fold_bytes=1)
    a, b = load_file(str(d / dash.DATA)), load_file(str(built / dash.DATA))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("dfa_") and a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k
    rows = heldout_rows(tiny_model, _spec().n_tokens, 32, DOCS)
    z = tiny_model.capture_z(rows, [LAYER])[LAYER].float()  # [R, T, H * dh]
    H, T = tiny_model.n_heads, rows.shape[1]
    z_h = z.view(*z.shape[:2], H, -1)
    w_h = sae.W_enc.detach().float().view(H, -1, sae.cfg.d_sae)  # head-major rows of W_enc
    checked = 0
    for f in range(sae.cfg.d_sae):
        for j, g in enumerate(b["top_idx"][f].tolist()):
            if g < 0:
                continue
            want = torch.einsum("hd,hd->h", z_h[g // T, g % T], w_h[:, :, f])
            torch.testing.assert_close(b["dfa_heads"][f, j], want, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked > 20


def test_logit_effects_by_hand(tiny_model, sae, built):
    f = 3
    board = read_dashboard(built, f)
    b = tiny_model.bridge
    dh = tiny_model.d_head
    direction = sum(sae.W_dec[f, h * dh : (h + 1) * dh] @ b.W_O[LAYER, h] for h in range(tiny_model.n_heads))
    direction = (direction - direction.mean()) * torch_layer_norm(b.ln_final).weight
    w_u = b.W_U - b.W_U.mean(dim=1, keepdim=True)  # vocabulary-centred, as the paper's DLA
    logits = (direction @ w_u).detach()
    top = logits.topk(4)
    raw = (direction @ b.W_U).detach()  # the raw unembedding ranks the same tokens, shifted by a constant
    assert torch.equal(raw.topk(4).indices, top.indices)
    torch.testing.assert_close(raw - logits, (direction @ b.W_U.mean(dim=1)).detach().expand_as(raw), atol=1e-4, rtol=1e-4)
    assert [t for t, _ in board.logits_top] == tiny_model.token_strs(top.indices)
    torch.testing.assert_close(torch.tensor([v for _, v in board.logits_top]), top.values, atol=1e-4, rtol=1e-4)
    shares = torch.tensor(board.head_shares)
    assert abs(float(shares.sum()) - 1) < 1e-5


def test_resume_gives_the_same_result(tiny_either, sae, built, tmp_path):
    tiny_model = tiny_either  # lean and bridge
    d = tmp_path / "layer-1"
    token = CancelToken()
    reports = []

    def stop_after_two(p: Progress) -> None:  # the check before the third batch stops the build
        reports.append(p)
        if len(reports) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        build_dashboards(tiny_model, sae, LAYER, _spec(), docs=DOCS, directory=d, batch_rows=3,
                         on_progress=stop_after_two, cancel=token)
    assert [p.done for p in reports] == [3 * 32, 6 * 32] and reports[0].job == "dashboards" and reports[0].unit == "tokens"
    assert (d / dash.PARTIAL).is_file() and not dash.is_built(d)
    seen = []
    res = build_dashboards(tiny_model, sae, LAYER, _spec(), docs=DOCS, directory=d, batch_rows=3,
                           on_progress=lambda p: seen.append(p.done))
    assert res.status == "built"
    assert seen[0] > 3 * 32  # resumed after the two finished batches, not from zero
    a, b = load_file(str(d / dash.DATA)), load_file(str(built / dash.DATA))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    again = build_dashboards(tiny_model, sae, LAYER, _spec(), docs=DOCS, directory=d)
    assert again.status == "cached"


def test_loading_is_fast_and_errors_are_clear(tiny_model, sae, built, tmp_path):
    t = time.perf_counter()
    read_dashboard(built, 7)
    assert time.perf_counter() - t < 0.5
    with pytest.raises(DashboardError, match="outside"):
        read_dashboard(built, 24)
    with pytest.raises(DashboardError, match="attnscope dashboards build --layer 1"):
        dash.load_dashboard(LAYER, 0, tiny_model, sae, root=tmp_path / "nothing")


def test_several_layers_in_one_scan_match_single_builds(tiny_model, sae, built, tmp_path):
    """Layers 1 and 2 from one pass (interrupted once, then resumed) give exactly the single-layer results."""
    sae2 = random_sae(tiny_model, 2, d_sae=20, seed=6)
    dirs = {1: tmp_path / "l1", 2: tmp_path / "l2"}
    token = CancelToken()

    def stop_once(p: Progress) -> None:
        if p.done >= 2 * 3 * 32:
            token.cancel()

    with pytest.raises(Cancelled):
        dash.build_layers(tiny_model, {1: sae, 2: sae2}, _spec(), DOCS, dirs, stop_once, token, batch_rows=3)
    assert all((d / dash.PARTIAL).is_file() and not dash.is_built(d) for d in dirs.values())
    res = dash.build_layers(tiny_model, {1: sae, 2: sae2}, _spec(), DOCS, dirs, cancel=CancelToken(), batch_rows=3)
    assert {r.status for r in res.values()} == {"built"}
    single2 = build_dashboards(tiny_model, sae2, 2, _spec(), docs=DOCS, directory=tmp_path / "s2", batch_rows=3)
    for multi, single in ((dirs[1], built), (dirs[2], single2.directory)):
        a, b = load_file(str(multi / dash.DATA)), load_file(str(single / dash.DATA))
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=k)


def test_merge_slots_keeps_the_k_largest():
    """Streaming top-K by slot replacement against sorting everything seen, with empty slots and repeats."""
    g = torch.Generator().manual_seed(0)
    d, K = 7, 4
    keys = torch.full((d, K), float("-inf"))
    payload = torch.full((d, K), -1.0)
    seen: list[list[float]] = [[] for _ in range(d)]
    for step in range(12):
        c = int(torch.randint(0, 15, (1,), generator=g))
        f = torch.randint(0, d, (c,), generator=g)
        k = torch.randint(0, 20, (c,), generator=g).float()  # integer keys: ties happen
        thr = keys.min(dim=1).values
        cand = k > thr[f]
        r, s, i = _merge_slots(keys, f[cand], k[cand])
        payload[r, s] = k[cand][i]  # payload follows its key
        for fi, ki in zip(f.tolist(), k.tolist()):
            seen[fi].append(ki)
        for fi in range(d):
            expected = sorted(seen[fi], reverse=True)[:K]
            got = sorted([x for x in keys[fi].tolist() if x > float("-inf")], reverse=True)
            assert got == expected, (step, fi)
        torch.testing.assert_close(payload[keys > float("-inf")], keys[keys > float("-inf")])


@pytest.mark.parametrize("arch, k", [("topk", 3), ("jumprelu", None)])
def test_other_architectures_match_brute_force(tiny_model, tmp_path, arch, k):
    s = random_sae(tiny_model, LAYER, d_sae=16, architecture=arch, seed=9, k=k)
    d = build_dashboards(tiny_model, s, LAYER, _spec(), docs=DOCS, directory=tmp_path / arch, batch_rows=4).directory
    rows = heldout_rows(tiny_model, _spec().n_tokens, 32, DOCS)
    with torch.no_grad():
        acts = s.encode(tiny_model.capture_z(rows, [LAYER])[LAYER])
    acts[:, 0] = 0
    flat = acts.reshape(-1, 16)
    for f in range(16):
        board = read_dashboard(d, f)
        expected = flat[:, f].topk(5).values
        expected = expected[expected > 0]
        torch.testing.assert_close(torch.tensor([e.act for e in board.top]), expected, atol=1e-5, rtol=1e-5)
        assert abs(board.density * acts.shape[0] * 31 - int((acts[:, :, f] > 0).sum())) < 1e-6


@pytest.mark.parametrize("shift, k", [(-1.0, 24), (0.5, 8), (-4.0, 5), (0.0, 40)])
def test_fast_topk_activation_matches_torch_topk(shift, k):
    g = torch.Generator().manual_seed(k)
    pre = torch.randn(300, 256, generator=g) + shift
    vals, idx = pre.topk(k, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    assert torch.equal(dash.topk_acts(pre, k), expected)
