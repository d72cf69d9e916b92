"""Evaluation metrics against an independent path: plain transformers GPT-2 with the SAE spliced by hand."""

from __future__ import annotations

import math

import pytest
import torch

from support import hf_z_offset, random_sae
from sae.engine.metrics import ce_recovered, evaluate_saes


def hf_run(model_dir, tokens: torch.Tensor, layer: int, replace=None):
    """Logits of plain transformers GPT-2 and the layer's processed z (c_proj input minus b_V + ln_1.b @ W_V),
    optionally replaced."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    attn = hf.transformer.h[layer].attn
    b_v = hf_z_offset(hf, layer)
    grabbed = {}

    def pre_hook(module, args):
        z = args[0] - b_v
        grabbed["z"] = z
        if replace is not None:
            return (replace(z) + b_v,)
        return None

    h = attn.c_proj.register_forward_pre_hook(pre_hook)
    with torch.no_grad():
        logits = hf(tokens).logits
    h.remove()
    return logits, grabbed["z"]


def ce(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()


@pytest.fixture(scope="module")
def loud_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with attention weights scaled up, so that zero-ablating a layer's z clearly moves the loss."""
    import shutil

    from transformers import GPT2LMHeadModel

    from sae.engine.models import load_model

    d = tmp_path_factory.mktemp("loud")
    shutil.copytree(tiny_model_dir, d, dirs_exist_ok=True)
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_attn.weight.mul_(8.0)
            block.attn.c_proj.weight.mul_(8.0)
        hf.transformer.wte.weight.mul_(10.0)  # tied unembedding: sharper next-token distributions
    hf.save_pretrained(d)
    return load_model(str(d), device="cpu"), d


def test_metrics_match_a_manual_splice(loud_model):
    tiny_model, tiny_model_dir = loud_model
    layer = 1
    sae = random_sae(tiny_model, layer, d_sae=48, seed=4)
    with torch.no_grad():
        sae.b_enc[:10] = -100.0  # 10 features that never fire
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, tiny_model.d_vocab, (4, 12), generator=g)
    tokens[:, 0] = tiny_model.bos_token_id
    # every position counts here (the formulas); the BOS rule is checked against SAELens in test_saelens_reference
    (res,) = evaluate_saes(tiny_model, {layer: sae}, tokens, batch_rows=3, exclude_special_tokens=False)

    clean, z = hf_run(tiny_model_dir, tokens, layer)
    with torch.no_grad():
        spliced, _ = hf_run(tiny_model_dir, tokens, layer, replace=lambda z: sae(z))
        zero, _ = hf_run(tiny_model_dir, tokens, layer, replace=torch.zeros_like)
        x = z.reshape(-1, z.shape[-1])
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        x_hat = f @ sae.W_dec + sae.b_dec
    ce_c, ce_s, ce_z = ce(clean, tokens), ce(spliced, tokens), ce(zero, tokens)
    assert abs(res.ce_clean - ce_c) < 1e-4
    assert abs(res.ce_sae - ce_s) < 1e-4
    assert abs(res.ce_zero_abl - ce_z) < 1e-4
    assert abs(ce_z - ce_c) > 0.05  # zero ablation must matter, or the recovered ratio is vacuous
    assert abs(res.ce_loss_recovered - (ce_z - ce_s) / (ce_z - ce_c)) < 1e-3
    lp, lq = clean.log_softmax(-1), spliced.log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    assert abs(res.kl - kl) < 1e-5
    assert abs(res.l0 - (f > 0).float().sum(-1).mean().item()) < 1e-6
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert abs(res.explained_variance - ev.item()) < 1e-4
    assert abs(res.nmse - (((x - x_hat) ** 2).sum() / (x**2).sum()).item()) < 1e-4
    fired = (f > 0).any(0)
    assert abs(res.dead_fraction - (~fired).float().mean().item()) < 1e-6
    assert res.dead_fraction >= 10 / 48
    dense = ((f > 0).float().mean(0) > 0.1).float().mean().item()
    assert abs(res.dense_fraction - dense) < 1e-6
    assert res.tokens == tokens.numel()
    d = res.to_dict()
    for key in ("hook", "layer", "d_in", "d_sae", "l0", "explained_variance", "nmse", "ce_clean", "ce_sae",
                "ce_zero_abl", "ce_loss_recovered", "kl", "dead_fraction", "dense_fraction", "tokens"):
        assert key in d


def test_ce_recovered_formula_and_undefined_case():
    assert ce_recovered(2.0, 2.5, 4.0) == 0.75
    assert ce_recovered(2.0, 2.5, 2.0) is None


def test_several_layers_in_one_eval(tiny_model):
    saes = {0: random_sae(tiny_model, 0, seed=1), 2: random_sae(tiny_model, 2, seed=2)}
    tokens = torch.randint(1, tiny_model.d_vocab, (2, 10))
    res = evaluate_saes(tiny_model, saes, tokens)
    assert [r.layer for r in res] == [0, 2]
    assert res[0].ce_clean == res[1].ce_clean
    assert all(math.isfinite(r.kl) for r in res)
