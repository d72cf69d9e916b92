"""The hand-written training steps against autograd on losses written out independently here."""

from __future__ import annotations

import pytest
import torch

from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.training.steps import standard_step_grads, topk_step_grads


def _sae(arch: str, d_in: int = 12, d_sae: int = 40, k: int | None = 5, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z", architecture=arch,
                        k=k if arch == "topk" else None))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae


def _autograd_topk(sae: SAE, x: torch.Tensor, k: int, dead: torch.Tensor, aux_k: int, aux_coeff: float):
    """Independent formula: dense top-k with an explicit loop-free mask, AuxK on the detached residual."""
    W_enc, W_dec, b_enc, b_dec = (p.detach().clone().requires_grad_(True) for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))
    pre = torch.einsum("bi,is->bs", x - b_dec, W_enc) + b_enc
    kth = pre.sort(-1, descending=True).values[:, k - 1 : k]
    f = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
    x_hat = torch.einsum("bs,si->bi", f, W_dec) + b_dec
    mse = ((x_hat - x) ** 2).sum(-1).mean()
    n_dead = int(dead.sum())
    loss = mse
    if n_dead:
        kk = min(aux_k, n_dead)
        pre_d = torch.where(dead, pre, torch.full_like(pre, -1e30))
        kth_d = pre_d.sort(-1, descending=True).values[:, kk - 1 : kk]
        f_aux = torch.where((pre_d >= kth_d) & dead, pre, torch.zeros_like(pre))  # no ReLU (SAELens)
        resid = (x - x_hat).detach()
        aux = ((torch.einsum("bs,si->bi", f_aux, W_dec) - resid) ** 2).sum(-1).mean() * min(1.0, n_dead / aux_k)
        loss = mse + aux_coeff * aux
    loss.backward()
    return loss.detach(), {"W_enc": W_enc.grad, "W_dec": W_dec.grad, "b_enc": b_enc.grad, "b_dec": b_dec.grad}


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("n_dead", [0, 4, 7, 40])
def test_topk_grads_match_autograd(sparse, n_dead):
    sae = _sae("topk")
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=torch.Generator().manual_seed(2))[:n_dead]] = True
    want_loss, want = _autograd_topk(sae, x, 5, dead, 6, 1 / 32)
    out = topk_step_grads(sae, x, 5, dead, 6, 1 / 32, sparse=sparse)
    torch.testing.assert_close(out["loss"], want_loss, atol=1e-5, rtol=1e-5)
    for name, g in want.items():
        torch.testing.assert_close(getattr(sae, name).grad, g, atol=1e-5, rtol=1e-4, msg=name)
    # firing counts: a latent fires on a token when it is among the top k and positive
    f = sae.encode(x)
    torch.testing.assert_close(out["fired"], (f > 0).sum(0).float())


@pytest.mark.parametrize("sparse", [True, False, None])
def test_standard_grads_match_autograd(sparse):
    sae = _sae("standard")
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    W_enc, W_dec, b_enc, b_dec = (p.detach().clone().requires_grad_(True) for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))
    f = torch.relu(torch.einsum("bi,is->bs", x - b_dec, W_enc) + b_enc)
    x_hat = torch.einsum("bs,si->bi", f, W_dec) + b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean() + 0.3 * f.abs().sum(-1).mean()
    loss.backward()
    out = standard_step_grads(sae, x, 0.3, sparse=sparse)
    torch.testing.assert_close(out["loss"], loss.detach())
    torch.testing.assert_close(out["fired"], (f > 0).sum(0).float())
    torch.testing.assert_close(out["x_hat"], x_hat.detach())
    for name, p in (("W_enc", W_enc), ("W_dec", W_dec), ("b_enc", b_enc), ("b_dec", b_dec)):
        torch.testing.assert_close(getattr(sae, name).grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_two_stage_topk_equals_topk():
    from sae.engine.training.steps import topk_rows

    g = torch.Generator().manual_seed(3)
    for n, k in ((1024, 32), (64, 5), (40, 12), (30, 4)):
        pre = torch.randn(200, n, generator=g)
        pre[:, ::7] -= 5.0  # uneven groups
        v, i = topk_rows(pre, k)
        want_v, want_i = pre.topk(k, dim=-1)
        assert torch.equal(v, want_v) and torch.equal(i, want_i)
