"""The dashboard scan's vectorised bookkeeping against the straightforward formulation it replaced, written out
here independently (per-example DFA by an explicit `[P, H, T]` product, the distance histogram by scatter_add
over log2 bins) and against a brute-force top-K over everything seen."""

from __future__ import annotations

import math

import pytest
import torch

from sae.analysis.dashboards.scan import DashboardScan, DashboardSpec, _merge_slots, example_dfa, source_facts


def reference_dfa(pattern, v, w_enc, p_b, p_t, p_f):
    """contrib[p, h, s] = pattern[b, h, t, s] * (v[b, s, h] . w_enc[h, :, f]); per source and per head sums."""
    P = len(p_b)
    contrib = torch.stack([
        pattern[p_b[i], :, p_t[i], :] * torch.einsum("shd,hd->hs", v[p_b[i]], w_enc[:, :, p_f[i]]) for i in range(P)
    ])  # [P, H, T]
    return contrib.sum(1), contrib.sum(2)


def reference_facts(per_src, tokens, dest):
    P, T = per_src.shape
    nb = max(1, int(math.floor(math.log2(T))) + 1)
    hist = torch.zeros(P, nb)
    top = torch.full((P,), -1, dtype=torch.long)
    for p in range(P):
        best, best_val = -1, 0.0
        for s in range(1, int(dest[p]) + 1):
            x = float(per_src[p, s])
            b = min(int(math.floor(math.log2(int(dest[p]) - s + 1))), nb - 1)
            hist[p, b] += max(x, 0.0)
            if x > best_val:
                best, best_val = s, x
        top[p] = best
    return hist, top


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    B, H, T, dh, d = 3, 2, 20, 4, 11
    pat = torch.rand(B, H, T, T, generator=g).tril()
    pat = pat / pat.sum(-1, keepdim=True)
    v = torch.randn(B, T, H, dh, generator=g)
    w = torch.randn(H, dh, d, generator=g)
    toks = torch.randint(0, 5, (B, T), generator=g)  # few ids: copies (induction pairs) happen
    P = 60
    p_b, p_t, p_f = (torch.randint(0, B, (P,), generator=g), torch.randint(0, T, (P,), generator=g),
                     torch.randint(0, d, (P,), generator=g))
    return pat, v, w, toks, p_b, p_t, p_f


def test_example_dfa_matches_the_explicit_product(batch):
    pat, v, w, toks, p_b, p_t, p_f = batch
    bias = torch.randn(w.shape[-1])
    got = example_dfa(pat, v, toks, w, bias, p_b, p_t, p_f, context=3)
    src, heads = reference_dfa(pat, v, w, p_b, p_t, p_f)
    torch.testing.assert_close(got["dfa_heads"], heads, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["dfa_pre"], src.sum(1) + bias[p_f], atol=1e-5, rtol=1e-5)
    for i in range(len(p_b)):
        t = int(p_t[i])
        want = torch.tensor([float(src[i, s]) if s >= 0 else 0.0 for s in range(t - 3, t + 1)])
        torch.testing.assert_close(got["dfa_src"][i], want, atol=1e-5, rtol=1e-5)
        assert abs(float(got["dfa_earlier"][i]) - float(src[i, : max(0, t - 3)].sum())) < 1e-5
    # the same with the feature-major copy a scan hands in
    again = example_dfa(pat, v, toks, w, bias, p_b, p_t, p_f, 3, w_feat=w.permute(2, 0, 1).contiguous())
    for k in got:
        torch.testing.assert_close(again[k], got[k])


def test_source_facts_match_a_loop_over_sources(batch):
    pat, v, w, toks, p_b, p_t, p_f = batch
    src, _ = reference_dfa(pat, v, w, p_b, p_t, p_f)
    got = source_facts(src, toks[p_b], p_t)
    hist, top = reference_facts(src, toks[p_b], p_t)
    torch.testing.assert_close(got["dfa_dist"], hist, atol=1e-5, rtol=1e-5)
    assert got["dfa_top_src"].tolist() == top.tolist()
    for i in range(len(p_b)):
        b, t, s = int(p_b[i]), int(p_t[i]), int(top[i])
        ind = s >= 2 and s < t - 1 and int(toks[b, s - 1]) == int(toks[b, t])
        assert bool(got["dfa_induction"][i]) == ind


def test_merge_slots_with_many_new_entries_per_feature():
    """A feature firing far more than K times in one batch (the padded block is cut to K per feature)."""
    g = torch.Generator().manual_seed(1)
    d, K = 3, 4
    keys = torch.full((d, K), float("-inf"))
    seen: list[list[float]] = [[] for _ in range(d)]
    for _ in range(5):
        f = torch.randint(0, d, (50,), generator=g)
        k = torch.rand(50, generator=g)
        cand = k > keys.min(dim=1).values[f]
        r, s, i = _merge_slots(keys, f[cand], k[cand])
        assert torch.equal(keys[r, s], k[cand][i])
        for fi, ki in zip(f.tolist(), k.tolist()):
            seen[fi].append(ki)
        for fi in range(d):
            assert sorted(keys[fi].tolist(), reverse=True) == sorted(seen[fi], reverse=True)[:K]


def test_scan_top_examples_and_dfa_against_brute_force():
    """Several batches through `DashboardScan.update`: each feature's top entries are the K largest activations
    seen, at the right places, each with the DFA of the explicit product."""
    g = torch.Generator().manual_seed(7)
    B, H, T, dh, d, K = 4, 2, 12, 3, 9, 3
    spec = DashboardSpec(context=2, n_top=K, n_samples=4, context_size=T)
    sc = DashboardScan(d, spec, H, T)
    w = torch.randn(H, dh, d, generator=g)
    all_acts, dfas = [], []
    for _ in range(3):
        acts = (torch.randn(B * T, d, generator=g) - 0.5).relu()
        pat = torch.rand(B, H, T, T, generator=g).tril()
        pat = pat / pat.sum(-1, keepdim=True)
        dfa = {"pattern": pat, "v": torch.randn(B, T, H, dh, generator=g),
               "tokens": torch.randint(0, 4, (B, T), generator=g), "w_enc": w, "bias": torch.zeros(d)}
        sc.update(acts, T, dfa=dfa)  # zeroes BOS in place
        all_acts.append(acts)
        dfas.append(dfa)
    flat = torch.cat(all_acts)  # [rows * T, d]
    sc.sort_top()
    for f in range(d):
        want = flat[:, f].topk(K).values
        want = want[want > 0]
        got = sc.top_val[f][sc.top_val[f] > -math.inf]
        torch.testing.assert_close(got, want)
        for j in range(len(got)):
            n = int(sc.top_idx[f, j])
            assert float(flat[n, f]) == float(got[j])
            batch_i, row, pos = n // (B * T), (n % (B * T)) // T, n % T
            dfa = dfas[batch_i]
            src, heads = reference_dfa(dfa["pattern"], dfa["v"], w, torch.tensor([row]), torch.tensor([pos]),
                                       torch.tensor([f]))
            torch.testing.assert_close(sc.dfa_heads[f, j], heads[0], atol=1e-5, rtol=1e-5)
            assert abs(float(sc.dfa_pre[f, j]) - float(src.sum())) < 1e-5
    assert int(sc.n_fire.sum()) == int((flat > 0).sum())


def test_layer_role_scores_match_the_per_feature_means():
    from sae.analysis.roles import layer_role_scores, role_scores

    g = torch.Generator().manual_seed(4)
    d, n = 30, 6
    rel = {"prev_share": torch.rand(d, n, generator=g), "dup": torch.rand(d, n, generator=g) > 0.5,
           "ind": torch.rand(d, n, generator=g) > 0.7, "near": torch.rand(d, n, generator=g),
           "far": torch.rand(d, n, generator=g)}
    valid = torch.rand(d, n, generator=g) > 0.4
    valid[3] = False  # a feature without examples
    feats = list(range(0, d, 2)) + [3]
    got = layer_role_scores(rel, valid, feats)
    for f in feats:
        want = role_scores({k: v[f] for k, v in rel.items()}, valid[f])
        assert got[f].n_examples == want.n_examples
        for name in ("previous", "duplicate", "induction", "near", "far"):
            assert abs(getattr(got[f], name) - getattr(want, name)) < 1e-12


def _brute_scan(batches, row_len, spec):
    """Everything the scan keeps, by hand over all firings: per feature, lists of (value, position, key) sorted in
    Python; the histogram bins with `math.log10`."""
    d = batches[0].shape[1]
    firings: list[list[tuple[float, int, float]]] = [[] for _ in range(d)]
    rows_done = 0
    for acts in batches:
        acts = acts.clone()
        acts.view(-1, row_len, d)[:, 0] = 0
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + rows_done)
        nz = [(n, f) for n in range(acts.shape[0]) for f in range(d) if float(acts[n, f]) != 0.0]
        keys = torch.rand(len(nz), generator=g).tolist()  # one key per firing, in row-major order
        for (n, f), key in zip(nz, keys):
            firings[f].append((float(acts[n, f]), rows_done * row_len + n, key))
        rows_done += acts.shape[0] // row_len
    width = (spec.hist_hi - spec.hist_lo) / spec.hist_bins
    out = []
    for f in range(d):
        top = sorted(firings[f], key=lambda x: (-x[0], x[1]))[: spec.n_top]  # ties: the earliest position
        samp = sorted(firings[f], key=lambda x: (-x[2], x[1]))[: spec.n_samples]
        hist = [0] * spec.hist_bins
        for val, _, _ in firings[f]:
            hist[min(max(int(math.floor((math.log10(val) - spec.hist_lo) / width)), 0), spec.hist_bins - 1)] += 1
        out.append({"top": [(v, p) for v, p, _ in top], "samp": sorted((v, p) for v, p, _ in samp), "hist": hist,
                    "n_fire": len(firings[f]), "sum": sum(v for v, _, _ in firings[f])})
    return out


@pytest.mark.parametrize("K, R", [(3, 4), (1, 1), (6, 40)])
def test_scan_keeps_the_k_best_with_ties_to_the_earliest(K, R):
    """Few distinct activations (many ties) and features that fire more than K times a batch: the top examples
    after `sort_top` are each feature's K largest, equal ones by position; the samples are the R largest keys; the
    histogram, counts and sums match a count by hand; every window is the feature's activations around its
    example."""
    g = torch.Generator().manual_seed(K * 10 + R)
    T, rows, d = 6, 3, 5
    spec = DashboardSpec(context=2, n_top=K, n_samples=R, context_size=T)
    levels = torch.tensor([0.0, 0.0, 0.3, 0.7, 1.3, 2.9])  # away from the histogram's bin edges
    batches = [levels[torch.randint(0, len(levels), (rows * T, d), generator=g)] for _ in range(4)]
    batches[1][:, 2] = 0.7  # one feature all ties in one batch
    sc = DashboardScan(d, spec, 1, T)
    for acts in batches:
        sc.update(acts.clone(), T)
    sc.sort_top()
    want = _brute_scan(batches, T, spec)
    flat = torch.cat(batches).view(-1, T, d).clone()
    flat[:, 0] = 0
    flat = flat.view(-1, d)
    for f in range(d):
        w = want[f]
        got_top = [(float(v), int(p)) for v, p in zip(sc.top_val[f], sc.top_idx[f]) if int(p) >= 0]
        assert got_top == [(pytest.approx(v), p) for v, p in w["top"]], f
        assert all(v == -math.inf for v in sc.top_val[f, len(w["top"]):].tolist())
        got_samp = sorted((float(v), int(p)) for v, p in zip(sc.samp_val[f], sc.samp_idx[f]) if int(p) >= 0)
        assert got_samp == [(pytest.approx(v), p) for v, p in w["samp"]], f
        assert sc.hist[f].tolist() == w["hist"]
        assert int(sc.n_fire[f]) == w["n_fire"]
        assert float(sc.sum_act[f]) == pytest.approx(w["sum"], abs=1e-6)
        for slots, idx in ((sc.top_win[f], sc.top_idx[f]), (sc.samp_win[f], sc.samp_idx[f])):
            for win, p in zip(slots, idx.tolist()):
                if p < 0:
                    continue
                t = p % T
                expect = [float(flat[p + o, f]) if 0 <= t + o < T else 0.0 for o in range(-2, 3)]
                assert win.float().tolist() == pytest.approx(expect, abs=2e-3)
    assert sc.n_tokens == 4 * rows * (T - 1)


def test_merge_slots_breaks_ties_by_position():
    """With the old entries' positions, an equal key never displaces an earlier entry, and among old entries of
    the same key the latest one makes way first."""
    keys = torch.tensor([[2.0, 1.0, 1.0]])
    pos = torch.tensor([[0, 5, 3]])
    r, c, i = _merge_slots(keys, torch.tensor([0, 0]), torch.tensor([1.0, 1.5]), pos)
    assert i.tolist() == [1] and c.tolist() == [1]  # 1.5 enters; the tie 1.0 (new) stays out; pos 5 goes
    assert keys.tolist() == [[2.0, 1.5, 1.0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scan_on_cuda_matches_the_cpu():
    """The state on the model's device: the same examples, samples and histograms as on the CPU."""
    g = torch.Generator().manual_seed(11)
    B, H, T, dh, d = 3, 2, 16, 4, 40
    spec = DashboardSpec(context=2, n_top=4, n_samples=6, context_size=T)
    scans = {dev: DashboardScan(d, spec, H, T, device=dev) for dev in ("cpu", "cuda")}
    w = torch.randn(H, dh, d, generator=g)
    for _ in range(3):
        acts = (torch.randn(B * T, d, generator=g) - 1.0).relu()
        pat = torch.rand(B, H, T, T, generator=g).tril()
        dfa = {"pattern": pat / pat.sum(-1, keepdim=True), "v": torch.randn(B, T, H, dh, generator=g),
               "tokens": torch.randint(0, 5, (B, T), generator=g), "w_enc": w, "bias": torch.zeros(d)}
        for dev, sc in scans.items():
            sc.update(acts.clone().to(dev), T, dfa={k: x.to(dev) for k, x in dfa.items()})
    cpu, cuda = scans["cpu"].tensors(), scans["cuda"].tensors()
    for k in cpu:
        if cpu[k].is_floating_point() and (k.startswith("dfa_") or k == "sum_act"):  # sums in another order
            torch.testing.assert_close(cuda[k], cpu[k], atol=1e-5, rtol=1e-4, msg=k)
        else:
            assert torch.equal(cuda[k], cpu[k]), k


def test_uniform_cut_never_drops_a_candidate_that_would_enter():
    """Uniform keys, keys all equal, keys bunched just under the cut level and few candidates: every feature's K
    first candidates by (key descending, position) are kept."""
    from sae.analysis.dashboards.scan import _uniform_cut

    g = torch.Generator().manual_seed(2)
    d, K = 6, 4
    floor = torch.tensor([-math.inf, 0.0, 0.5, -math.inf, 0.9, 0.2])
    cases = []
    f = torch.randint(0, d, (400,), generator=g)
    lo = floor.clamp(min=0)[f]
    cases.append((lo + (1 - lo) * torch.rand(400, generator=g), f))  # as the scan draws them
    cases.append((torch.full((400,), 0.95), f))  # all equal
    cases.append((lo + (1 - lo) * 0.999 * torch.rand(400, generator=g) ** 8, f))  # bunched low: the fallback
    cases.append((torch.rand(10, generator=g), torch.randint(0, d, (10,), generator=g)))  # few: keep all
    for key, ff in cases:
        kept = set(_uniform_cut(key, ff, floor, K).tolist())
        for fi in range(d):
            idx = [i for i in range(len(ff)) if int(ff[i]) == fi]
            best = sorted(idx, key=lambda i: (-float(key[i]), i))[:K]
            assert set(best) <= kept, fi


def _canonical(sc: DashboardScan) -> dict[str, torch.Tensor]:
    """The state with each feature's slots in one order (the scan keeps them unordered): top by `sort_top`,
    samples by position."""
    sc.sort_top()
    t = sc.tensors()
    order = t["samp_idx"].argsort(dim=1)
    for k in ("samp_key", "samp_val", "samp_idx", "samp_win"):
        t[k] = t[k].gather(1, order.view(*order.shape, *([1] * (t[k].dim() - 2))).expand_as(t[k]))
    return t


def test_folding_batches_gives_the_batch_by_batch_state():
    """Four model batches folded into one update (rows given as lists, keys drawn per batch of rows) leave the
    same state as four updates: the same top examples, samples, windows and histograms; DFA to float rounding."""
    g = torch.Generator().manual_seed(9)
    B, H, T, dh, d = 3, 2, 12, 3, 7
    spec = DashboardSpec(context=2, n_top=3, n_samples=4, context_size=T)
    w = torch.randn(H, dh, d, generator=g)
    batches = []
    for _ in range(4):
        pat = torch.rand(B, H, T, T, generator=g).tril()
        batches.append(((torch.randn(B * T, d, generator=g) + 0.2).relu(),
                        {"pattern": pat / pat.sum(-1, keepdim=True), "v": torch.randn(B, T, H, dh, generator=g),
                         "tokens": torch.randint(0, 4, (B, T), generator=g), "w_enc": w, "bias": torch.zeros(d)}))
    one = DashboardScan(d, spec, H, T)
    for acts, dfa in batches:
        one.update(acts.clone(), T, dfa=dfa)
    folded = DashboardScan(d, spec, H, T)
    dfa = {"pattern": [r for _, x in batches for r in x["pattern"].unbind(0)],
           "v": [r for _, x in batches for r in x["v"].unbind(0)],
           "tokens": torch.cat([x["tokens"] for _, x in batches]), "w_enc": w, "bias": torch.zeros(d)}
    folded.update(torch.cat([a for a, _ in batches]).clone(), T, dfa=dfa, key_rows=B)
    assert folded.rows_done == one.rows_done and folded.n_tokens == one.n_tokens
    a, b = [_canonical(sc) for sc in (one, folded)]
    assert int((a["samp_idx"] >= 0).sum()) == d * 4  # every sample slot filled: the cut had work to do
    for k in a:
        if k.startswith("dfa_") and a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)
        else:
            assert torch.equal(b[k], a[k]), k
