"""A feature against a proxy: masks by hand, counts and histograms against activations computed independently."""

from __future__ import annotations

import pytest
import torch
from support import random_sae, run_cli

from sae.analysis import proxy as px


def test_induction_mask_by_hand():
    # BOS a X b a X a : " X is next by induction" holds where the current token appeared before, followed by X
    a, X, b = 5, 9, 7
    rows = [[0, a, X, b, a, X, a]]
    got = px.induction_mask(rows, X, lambda t: [])
    assert got[0].tolist() == [False, False, False, False, True, False, True]
    # with variants: token 6 counts as a variant of 5 (say " a" and "a")
    rows = [[0, a, X, 6]]
    assert px.induction_mask(rows, X, lambda t: [5] if t == 6 else [])[0].tolist() == [False, False, False, True]
    assert px.induction_mask(rows, X, lambda t: [])[0].tolist() == [False] * 4


def test_regex_mask_by_hand():
    pieces = [["<bos>", "The", " cat", " sat", " on", " 42"]]
    assert px.regex_mask(pieces, "cat")[0].tolist() == [False, False, True, False, False, False]
    assert px.regex_mask(pieces, r"cat sat")[0].tolist() == [False, False, False, True, False, False]
    assert px.regex_mask(pieces, r"\d+")[0].tolist() == [False] * 5 + [True]


def test_parse_errors_are_one_line(tiny_model):
    with pytest.raises(px.ProxyError, match="KIND:ARG"):
        px.parse_proxy("board", tiny_model.encode)
    with pytest.raises(px.ProxyError, match="does not compile"):
        px.parse_proxy("regex:(", tiny_model.encode)
    with pytest.raises(px.ProxyError, match="tokens for this model"):
        px.parse_proxy("token: a whole sentence of many tokens", tiny_model.encode)


def test_study_counts_and_histograms_against_a_plain_forward(tiny_either, rows):
    tiny_model = tiny_either  # lean and bridge
    sae = random_sae(tiny_model, 1, d_sae=32, seed=3)
    data = rows[:6]
    feature = int(torch.arange(32)[0])
    # the proxy "the current token is T", T the most frequent non-BOS token of the rows
    t = int(data[:, 1:].flatten().mode().values)
    proxy = px.Proxy("token", tiny_model.token_strs([t])[0], t)
    r = px.proxy_study(tiny_model, sae, 1, feature, proxy, data, bins=7, n_examples=3)
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(data, names_filter=lambda n: n == "blocks.1.attn.hook_z")
        z = (cache["blocks.1.attn.hook_z"] - tiny_model.z_offset(1)).flatten(-2)
        act = sae.encode(z)[..., feature][:, 1:]
    fires, prox = act > 0, data[:, 1:] == t
    assert r.n_tokens == data[:, 1:].numel() and r.n_fires == int(fires.sum()) and r.n_proxy == int(prox.sum())
    assert (r.true_positives, r.false_positives, r.false_negatives) == (
        int((fires & prox).sum()), int((fires & ~prox).sum()), int((~fires & prox).sum()))
    assert sum(r.counts_true) == r.true_positives and sum(r.counts_false) == r.false_positives
    if r.true_positives + r.false_positives:
        assert r.specificity == pytest.approx(r.true_positives / (r.true_positives + r.false_positives))
        centres = [(r.edges[i] + r.edges[i + 1]) / 2 for i in range(7)]
        for i in range(7):  # the paper's expected value: centre x count / the category's firings
            assert r.expected_false[i] == pytest.approx(centres[i] * r.counts_false[i] / max(r.false_positives, 1))
        top = float(act[fires & ~prox].max()) if r.false_positives else None
        if top is not None:
            assert r.false_positive_examples[0].act == pytest.approx(top, abs=1e-5)
    for e in r.false_negative_examples:
        assert e.tokens[e.active] == proxy.arg and e.act == 0.0


def test_cli_proxy(capsys, tiny_model_dir, tmp_path):
    import json

    from support import sae_set_dir
    from sae.engine.models import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    saes = sae_set_dir(model, tmp_path / "saes")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. the cat sat on the mat again. " * 80)
    base = ["proxy", "--layer", "1", "--feature", "2", "--model", str(tiny_model_dir), "--saes", str(saes),
            "--corpus", str(corpus), "--rows", "4", "--seq-len", "32"]
    code, out, _ = run_cli(capsys, base + ["--rule", "regex:at", "--json"])
    d = json.loads(out)
    assert code == 0 and d["proxy"] == "regex:at" and d["n_tokens"] == 4 * 31
    code, out, _ = run_cli(capsys, base + ["--rule", "regex:at", "--md"])
    assert code == 0 and "specificity" in out and "false positives" in out
    code, _, err = run_cli(capsys, base + ["--rule", "bogus"])
    assert code == 2 and any("KIND:ARG" in e for e in err)
