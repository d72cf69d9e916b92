"""Composition with a residual-stream SAE (trained here, saved and read back in SAELens format) through W_V."""

from __future__ import annotations

import pytest
import torch
from support import random_sae, torch_layer_norm

from sae.analysis import composition
from sae.analysis.dfa import dfa_by_source
from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.formats import load_sae, save_sae

LAYER = 1
PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


@pytest.fixture(scope="module")
def resid_sae(tiny_model, rows, tmp_path_factory):
    """A small ReLU SAE on blocks.1.hook_resid_pre of the tiny model, trained by a plain Adam loop."""
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(rows[:16], names_filter=lambda n: n == f"blocks.{LAYER}.hook_resid_pre")
    x = cache[f"blocks.{LAYER}.hook_resid_pre"][:, 1:].reshape(-1, tiny_model.d_model).float()
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=tiny_model.d_model, d_sae=40, hook_name=f"blocks.{LAYER}.hook_resid_pre"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    first = None
    for step in range(300):
        batch = x[torch.randint(0, len(x), (256,))]
        f = sae.encode(batch)
        loss = (sae.decode(f) - batch).pow(2).sum(-1).mean() + 1e-3 * f.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.5 * first  # it learned something
    path = save_sae(sae, tmp_path_factory.mktemp("resid") / "blocks.1.hook_resid_pre")
    return load_sae(path)


@pytest.fixture(scope="module")
def attn_saes(tiny_model):
    return {LAYER: random_sae(tiny_model, LAYER, d_sae=48, seed=2)}


def test_shares_add_up_to_the_dfa_by_source(tiny_model, attn_saes, resid_sae):
    assert resid_sae.cfg.hook_name == "blocks.1.hook_resid_pre"
    sae = attn_saes[LAYER]
    feature = 5
    r = composition.resid_composition(tiny_model, attn_saes, LAYER, feature, resid_sae, PROMPT, top=10_000)
    assert r.n_active == len(r.top) > 0 and r.src <= r.dst
    total = sum(x.share for x in r.top) + r.b_dec_share + r.error_share
    # the DFA by source from the values themselves (hook v), independent of the residual split
    tokens = tiny_model.to_tokens(PROMPT)[0]
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(tokens)
    pattern = cache[f"blocks.{LAYER}.attn.hook_pattern"][0].float()
    v = cache[f"blocks.{LAYER}.attn.hook_v"][0].float() - tiny_model.z_offset(LAYER).float()
    per = dfa_by_source(pattern, v, sae, torch.tensor([feature]), dest=r.dst)[0]
    assert r.source_share == pytest.approx(float(per[:, r.src].sum()), abs=1e-4)
    assert total == pytest.approx(r.source_share, abs=1e-4)


def test_value_score_is_the_papers_get_resid_features_by_hand(tiny_either, attn_saes, resid_sae):
    tiny_model = tiny_either  # lean and bridge
    sae = attn_saes[LAYER]
    feature = 7
    r = composition.resid_composition(tiny_model, attn_saes, LAYER, feature, resid_sae, PROMPT, dst=-1, top=5)
    tokens = tiny_model.to_tokens(PROMPT)[0]
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(tokens)
        x = cache[f"blocks.{LAYER}.hook_resid_pre"][0, r.src].float()
        f = resid_sae.encode(x.unsqueeze(0))[0]
    # the paper: (f_j W_dec[j]) @ W_V_cat @ W_enc[:, i], W_V as TransformerLens processes it (ln1's weight folded in)
    w_ln = torch_layer_norm(tiny_model.bridge.blocks[LAYER].ln1).weight.float()
    wv_cat = (tiny_model.bridge.W_V[LAYER].float() * w_ln[None, :, None]).permute(1, 0, 2).reshape(tiny_model.d_model, -1)
    for row in r.top:
        want = float(((f[row.feature] * resid_sae.W_dec[row.feature]) @ wv_cat @ sae.W_enc[:, feature]).detach())
        assert row.value_score == pytest.approx(want, abs=1e-4)
        assert row.act == pytest.approx(float(f[row.feature]), abs=1e-6)
    assert [abs(x.share) for x in r.top] == sorted((abs(x.share) for x in r.top), reverse=True)


def test_bad_residual_sae_is_one_line(tiny_model, attn_saes):
    wrong = SAE(SAEConfig(d_in=tiny_model.d_model, d_sae=8, hook_name="blocks.0.hook_resid_pre"))
    with pytest.raises(composition.CompositionError, match="needs one on 'blocks.1.hook_resid_pre'"):
        composition.resid_composition(tiny_model, attn_saes, LAYER, 0, wrong, PROMPT)


def test_cli_compose(capsys, tiny_model_dir, tiny_model, resid_sae, tmp_path):
    import json

    from support import run_cli, sae_set_dir

    saes = sae_set_dir(tiny_model, tmp_path / "attn")
    resid_dir = save_sae(resid_sae, tmp_path / "resid" / "blocks.1.hook_resid_pre")
    base = ["compose", PROMPT, "--layer", "1", "--feature", "3", "--model", str(tiny_model_dir), "--saes", str(saes),
            "--resid-sae", str(resid_dir)]
    code, out, _ = run_cli(capsys, base + ["--json", "--top", "4"])
    d = json.loads(out)
    assert code == 0 and d["layer"] == 1 and len(d["top"]) <= 4 and d["resid_hook"] == "blocks.1.hook_resid_pre"
    code, out, _ = run_cli(capsys, base + ["--md"])
    assert code == 0 and "value score (paper)" in out
    wrong = ["compose", PROMPT, "--layer", "2", "--feature", "3", "--model", str(tiny_model_dir), "--saes", str(saes),
             "--resid-sae", str(resid_dir)]
    code, _, err = run_cli(capsys, wrong)
    assert code == 2 and any("blocks.2.hook_resid_pre" in e for e in err)
