"""DFA by head and by source position: exact splits of the pre-activation, checked against hand-written loops."""

from __future__ import annotations

import pytest
import torch
from support import random_sae

from sae.analysis.dfa import (
    PromptError,
    dfa_by_head,
    dfa_by_source,
    head_shares,
    head_source_matrix,
    prompt_features,
    run_layer,
)

PROMPT = "When Mary and John went to the store, John gave a drink to Mary."


@pytest.fixture(scope="module")
def sae1(tiny_model):
    return random_sae(tiny_model, 1, d_sae=64, seed=3)


def test_dfa_by_head_matches_per_head_matmul(tiny_model, sae1):
    torch.manual_seed(0)
    z = torch.randn(7, tiny_model.d_z)
    ids = torch.tensor([0, 5, 63])
    got = dfa_by_head(z, sae1, ids, tiny_model.n_heads)  # [pos, K, H]
    dh = tiny_model.d_head
    for h in range(tiny_model.n_heads):
        expected = z[:, h * dh : (h + 1) * dh] @ sae1.W_enc[h * dh : (h + 1) * dh][:, ids]
        torch.testing.assert_close(got[:, :, h], expected, atol=1e-5, rtol=1e-5)
    # exactness against the SAE's own encoder
    pre = sae1.encode_pre(z)[:, ids]
    torch.testing.assert_close(got.sum(-1) + sae1.encoder_bias_total[ids], pre, atol=1e-5, rtol=1e-5)


def test_dfa_by_source_matches_loops(tiny_model, sae1):
    torch.manual_seed(1)
    H, dh, P = tiny_model.n_heads, tiny_model.d_head, 5
    pattern = torch.softmax(torch.randn(H, P, P) + torch.triu(torch.full((P, P), -1e9), 1), dim=-1)
    v = torch.randn(P, H, dh)
    ids = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    got = dfa_by_source(pattern, v, sae1, ids)  # [t, K, H, s]
    for t in range(P):
        for k in range(2):
            i = int(ids[t, k])
            for h in range(H):
                for s in range(P):
                    w = sae1.W_enc[h * dh : (h + 1) * dh, i].detach()
                    exp = float(pattern[h, t, s] * (v[s, h] @ w))
                    assert abs(float(got[t, k, h, s]) - exp) < 1e-5
    one = dfa_by_source(pattern, v, sae1, torch.tensor([5, 6]), dest=2)
    torch.testing.assert_close(one, got[2, :, :, :3])


def test_prompt_features_are_exact(tiny_either, sae1):
    tiny_model = tiny_either  # lean and bridge
    res = prompt_features(tiny_model, sae1, PROMPT, top_k=4)
    z = tiny_model.capture_z(tiny_model.to_tokens(PROMPT)[0], [1])[1][0]  # a second code path for z
    pre_all = sae1.encode_pre(z).detach()
    n_checked = 0
    for p in res.positions:
        assert len(p.features) <= 4
        for f in p.features:
            assert abs(f.pre_act - float(pre_all[p.pos, f.id])) < 1e-4
            assert f.act > 0
            assert len(f.dfa_heads) == tiny_model.n_heads
            assert len(f.dfa_src) == p.pos + 1
            assert abs(sum(f.dfa_heads) + f.dfa_bias - f.pre_act) < 1e-4
            assert abs(sum(f.dfa_src) + f.dfa_bias - f.pre_act) < 1e-4
            per_head_src = head_source_matrix(res, sae1, p.pos, f.id)  # [H, pos+1]
            torch.testing.assert_close(per_head_src.sum(-1), torch.tensor(f.dfa_heads), atol=1e-4, rtol=1e-4)
            n_checked += 1
    assert n_checked > 10
    d = res.to_dict()
    assert set(d) >= {"model", "layer", "tokens", "positions"}
    assert set(d["positions"][1]["features"][0]) == {"id", "act", "pre_act", "dfa_heads", "dfa_bias", "dfa_src"}


def test_pattern_times_values_gives_z(tiny_either):
    tiny_model = tiny_either  # lean and bridge
    """The value-bias convention: z (bias removed) is exactly A @ v (bias removed)."""
    toks = tiny_model.to_tokens(PROMPT)[0]
    t = run_layer(tiny_model, toks, 2)
    z = torch.einsum("bhts,bshd->bthd", t.pattern, t.v).flatten(-2)
    torch.testing.assert_close(z, t.z, atol=1e-5, rtol=1e-4)


def test_head_shares_sum_to_one(tiny_model, sae1):
    s = head_shares(sae1, tiny_model.n_heads)
    torch.testing.assert_close(s.sum(-1), torch.ones(sae1.cfg.d_sae))
    dh = tiny_model.d_head
    n0 = sae1.W_dec[7, :dh].norm()
    total = sum(sae1.W_dec[7, h * dh : (h + 1) * dh].norm() for h in range(tiny_model.n_heads))
    assert abs(float(s[7, 0]) - float((n0 / total).detach())) < 1e-6


def test_empty_prompt_is_rejected(tiny_model, sae1):
    with pytest.raises(PromptError):
        prompt_features(tiny_model, sae1, "   ")


def test_long_prompt_is_truncated(tiny_model, sae1):
    res = prompt_features(tiny_model, sae1, "word " * 500, top_k=1)
    assert res.truncated and len(res.tokens) == tiny_model.n_ctx


def test_stopping_early_leaves_the_model_intact(tiny_model):
    """run_layer aborts the forward pass from a hook; later full passes must be unaffected (no hooks left)."""
    toks = tiny_model.to_tokens(PROMPT)[0]
    with torch.no_grad():
        before = tiny_model.bridge(toks)
        t = run_layer(tiny_model, toks, 0)
        after = tiny_model.bridge(toks)
    torch.testing.assert_close(before, after)
    torch.testing.assert_close(t.z, tiny_model.capture_z(toks, [0])[0])


def test_heatmap_columns_put_dense_features_last(tiny_model, tmp_path):
    """The first column (where the explore screen's cursor starts) is the strongest feature that is neither dense on
    the training tokens (> 10%, from the SAE's saved densities) nor on most of the prompt; those still come, after
    the others."""
    from sae.analysis.dfa import PromptFeatures, dense_mask
    from sae.engine.formats import load_sae, save_sae

    acts = torch.zeros(4, 7)
    acts[0, 2], acts[1, 0], acts[2, 5], acts[3, 1] = 9.0, 5.0, 3.0, 1.0  # strength order 2, 0, 5, 1
    acts[:, 6] = torch.tensor([0.5, 0.0, 7.0, 2.0])  # strong, but on 3 of the 4 positions: picks nothing out
    res = PromptFeatures(model="m", layer=0, tokens=["a"] * 4, token_ids=[0] * 4, acts=acts)
    assert res.top_features(7) == [2, 6, 0, 5, 1]  # features 3 and 4 never fire: not columns
    dense = torch.tensor([False, False, True, False, False, False, False])
    assert res.top_features(7, last=dense) == [0, 5, 1, 2, 6]
    assert res.top_features(2, last=dense) == [0, 5]
    assert res.top_features(7, last=torch.zeros(7, dtype=torch.bool)) == [2, 0, 5, 1, 6]

    sae = random_sae(tiny_model, 0, d_sae=6)
    log10 = torch.log10(torch.tensor([0.5, 0.01, 0.2, 0.1, 1e-5, 0.099]))
    save_sae(sae, tmp_path / "with", log10)
    assert dense_mask(load_sae(tmp_path / "with")).tolist() == [True, False, True, False, False, False]
    save_sae(sae, tmp_path / "without")
    assert dense_mask(load_sae(tmp_path / "without")) is None


# ---- one forward for every layer ---------------------------------------------------------------------------


def test_every_layer_from_one_forward_equals_the_per_layer_runs(tiny_model):
    """prompt_features_layers runs the model once (stopping at the last layer's z) and gives, at every layer, the
    same numbers as a forward stopped at that layer alone."""
    from sae.analysis.dfa import prompt_features_layers
    from support import count_passes

    saes = {x: random_sae(tiny_model, x, d_sae=40, seed=10 + x) for x in range(tiny_model.n_layers)}
    with count_passes(tiny_model) as passes:
        every = prompt_features_layers(tiny_model, saes, PROMPT, top_k=4)
    assert passes["n"] == 1 and sorted(every) == list(range(tiny_model.n_layers))
    for layer, sae in saes.items():
        one = prompt_features(tiny_model, sae, PROMPT, top_k=4, layer=layer)
        got = every[layer]
        assert got.tokens == one.tokens and got.layer == layer
        for a, b in [(got.acts, one.acts), (got.pre, one.pre), (got.ids, one.ids), (got.tensors.z, one.tensors.z),
                     (got.tensors.pattern, one.tensors.pattern), (got.tensors.v, one.tensors.v)]:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        assert got.to_dict() == one.to_dict()
        assert got.top_features(6) == one.top_features(6)


def test_every_layer_from_one_forward_against_hugging_face_hooks(tiny_model, tiny_model_dir):
    """An independent computation: z from forward pre-hooks on a separate Hugging Face GPT-2's `c_proj` (value
    bias removed by hand) and its attention patterns, encoded and attributed here by hand."""
    from transformers import GPT2LMHeadModel

    from sae.analysis.dfa import prompt_features_layers
    from support import hf_z_offset

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    saes = {x: random_sae(tiny_model, x, d_sae=40, seed=20 + x) for x in range(tiny_model.n_layers)}
    every = prompt_features_layers(tiny_model, saes, PROMPT, top_k=3)
    tokens = torch.tensor([every[0].token_ids])
    zs: dict[int, torch.Tensor] = {}
    handles = [hf.transformer.h[x].attn.c_proj.register_forward_pre_hook(
        lambda mod, args, x=x: zs.__setitem__(x, args[0][0].detach() - hf_z_offset(hf, x)))
        for x in range(tiny_model.n_layers)]
    try:
        with torch.no_grad():
            out = hf(tokens, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    H, dh = tiny_model.n_heads, tiny_model.d_head
    for layer, sae in saes.items():
        got = every[layer]
        z = zs[layer]  # [pos, H * dh]
        pre = (z - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach()
        torch.testing.assert_close(got.pre, pre, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.acts, torch.relu(pre), atol=1e-5, rtol=1e-5)
        pattern = out.attentions[layer][0]  # [H, dest, src]
        torch.testing.assert_close(got.tensors.pattern[0], pattern, atol=1e-5, rtol=1e-5)
        for p in got.positions[1:]:
            for f in p.features:
                w = sae.W_enc.detach()[:, f.id].reshape(H, dh)
                heads = (z[p.pos].reshape(H, dh) * w).sum(-1)
                assert torch.allclose(torch.tensor(f.dfa_heads), heads, atol=1e-5)
                assert abs(f.pre_act - float(pre[p.pos, f.id])) < 1e-5
                assert abs(sum(f.dfa_src) + f.dfa_bias - f.pre_act) < 1e-4


def test_a_prompt_run_holds_only_its_layers(tiny_model, sae1):
    from sae.analysis.dfa import run_prompt

    run = run_prompt(tiny_model, PROMPT, [0])
    assert sorted(run.layers) == [0]
    with pytest.raises(ValueError, match="stopped before layer 1"):
        run.features(sae1, 1)
