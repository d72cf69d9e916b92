"""Feature search against independent computations: the dashboards read back one feature at a time (every stored
example as token strings, a Python loop), the roles' own report, a label file, and a plain forward hook."""

from __future__ import annotations

import json

import pytest
import torch
from support import TINY_TEXT, hf_z_offset, random_sae, run_cli

from sae.analysis import search
from sae.analysis.dashboards import DashboardSpec, build_dashboards, read_dashboard
from sae.analysis.labels import LabelStore

LAYER = 1
DOCS = [TINY_TEXT[i : i + 300] for i in range(0, 3000, 300)]
SPEC = DashboardSpec(n_tokens=32 * 10, context=3, n_top=5, n_samples=8, n_dfa=2, context_size=32, n_logits=4)


@pytest.fixture(scope="module")
def sae(tiny_model):
    return random_sae(tiny_model, LAYER, d_sae=24, seed=7)


@pytest.fixture(scope="module")
def built(tiny_model, sae, tmp_path_factory):
    d = tmp_path_factory.mktemp("dash-search") / "layer-1"
    assert build_dashboards(tiny_model, sae, LAYER, SPEC, docs=DOCS, directory=d, batch_rows=3).status == "built"
    return d


def _examples(d, f):
    """Every stored window of feature f: top examples and all random samples, as (tokens, acts)."""
    b = read_dashboard(d, f, n_bins=SPEC.n_samples, per_bin=SPEC.n_samples)
    return [(e.tokens, e.acts) for e in b.top] + [(e.tokens, e.acts) for q in b.quantiles for e in q.examples], b


def test_by_token_is_the_mean_over_stored_windows(built, sae):
    token = " John"
    want = {}
    for f in range(sae.cfg.d_sae):
        vals = [a for toks, acts in _examples(built, f)[0] for t, a in zip(toks, acts) if t == token]
        if len(vals) >= search.MIN_OCCURRENCES and sum(vals) > 0:
            want[f] = sum(vals) / len(vals)
    assert want, "the token never occurs in a window"
    res = search.by_token({LAYER: built}, token, top=100)
    got = {h.feature: h.score for h in res.hits}
    assert set(got) == set(want)
    for f, v in want.items():
        assert got[f] == pytest.approx(v, rel=1e-3, abs=1e-3)  # windows are stored in fp16
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    assert search.by_token({LAYER: built}, "John", top=100).hits  # without the space it still finds ' John'
    with pytest.raises(search.SearchError, match="appears in none"):
        search.by_token({LAYER: built}, "zebra-not-a-token")


def test_by_text_finds_the_strongest_example_containing_it(built, sae):
    frag = "drink"
    want = {}
    for f in range(sae.cfg.d_sae):
        _, b = _examples(built, f)
        for e in b.top:
            if frag in "".join(e.tokens).lower():
                want[f] = e.act
                break
    res = search.by_text({LAYER: built}, "DRINK", top=100)
    assert {h.feature: h.score for h in res.hits} == pytest.approx(want, abs=1e-5)


def test_by_role_and_label(built, sae, tmp_path):
    from sae.analysis.roles import roles_layer

    roles = roles_layer(built).role_of()
    role = max(set(roles.values()), key=lambda r: list(roles.values()).count(r))
    res = search.by_role({LAYER: built}, role, top=100)
    assert {h.feature for h in res.hits} >= {f for f, r in roles.items() if r == role}
    assert (built / search.ROLE_FILE).is_file()  # the second search reads them back
    search._CACHE.clear()
    assert search.by_role({LAYER: built}, role, top=100).hits == res.hits

    store = LabelStore(tmp_path / "labels.json")
    sae_id = json.loads((built / "index.json").read_text())["sae_hash"]
    store.put(sae_id, LAYER, 4, "induction", note="fires on the second John")
    store.put(sae_id, LAYER, 9, "other")
    hits = search.by_label({LAYER: built}, store, "second john").hits
    assert [(h.layer, h.feature) for h in hits] == [(LAYER, 4)]


def test_at_position_against_a_plain_hook(tiny_either, tiny_model_dir):
    tiny_model = tiny_either  # lean and bridge
    from transformers import GPT2LMHeadModel

    saes = {x: random_sae(tiny_model, x, d_sae=40, seed=30 + x) for x in (0, 2)}
    prompt = "When Mary and John went to the store"
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    tokens = tiny_model.to_tokens(prompt)[0].cpu()
    got = {}

    def grab(layer):
        def hook(module, args):
            got[layer] = args[0][0].detach()
        return hook

    hs = [hf.transformer.h[x].attn.c_proj.register_forward_pre_hook(grab(x)) for x in (0, 2)]
    with torch.no_grad():
        hf(tokens)
    for h in hs:
        h.remove()
    want = []
    for x, s in saes.items():
        z = got[x][3] - hf_z_offset(hf, x)
        acts = torch.relu((z - s.b_dec) @ s.W_enc + s.b_enc).detach()
        want += [(float(a), x, i) for i, a in enumerate(acts.tolist()) if a > 0]
    want.sort(key=lambda t: (-t[0], t[1], t[2]))
    res = search.at_position(tiny_model, saes, prompt, 3, top=6)
    assert [(h.layer, h.feature) for h in res.hits] == [(x, i) for _, x, i in want[:6]]
    assert [h.score for h in res.hits] == pytest.approx([a for a, _, _ in want[:6]], abs=1e-4)


def test_cli(capsys, tiny_model_dir, tiny_model, tmp_path):
    from support import sae_set_dir

    d = sae_set_dir(tiny_model, tmp_path)
    code, out, err = run_cli(capsys, ["search", "--prompt", "When Mary and John", "--pos", "2", "--model",
                                      str(tiny_model_dir), "--saes", str(d), "--device", "cpu", "--json", "--top", "4"])
    assert code == 0, err
    data = json.loads(out)
    assert data["by"] == "position" and len(data["hits"]) <= 4 and data["extra"]["pos"] == 2
    code, out, err = run_cli(capsys, ["search", "--token", "the", "--model", str(tiny_model_dir), "--saes", str(d),
                                      "--device", "cpu"])
    assert code == 2 and err[0].startswith("attnscope: error:") and "not built" in err[0]
