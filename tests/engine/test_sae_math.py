"""The maths of SAE training, each checked against an independent computation (einsum by hand, autograd)."""

from __future__ import annotations

import torch

from support import random_sae
from sae.engine.activations import ActivationBuffer, ZSource
from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.training.loop import (
    TrainConfig,
    lr_at,
    make_optimizer,
    remove_parallel_grad,
    resample_dead,
    sae_forward_train,
    standard_loss,
    standard_step_grads,
    topk_aux_loss,
)


def small_sae(arch: str = "standard", d_in: int = 12, d_sae: int = 40, k: int | None = None, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z", architecture=arch, k=k))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def test_training_forward_matches_hand_computation():
    sae = small_sae()
    x = torch.randn(7, 12)
    pre_hand = torch.einsum("bd,ds->bs", x - sae.b_dec, sae.W_enc) + sae.b_enc
    f_hand = pre_hand.clamp(min=0)
    xhat_hand = torch.einsum("bs,sd->bd", f_hand, sae.W_dec) + sae.b_dec
    pre, f, x_hat = sae_forward_train(sae, x)
    torch.testing.assert_close(pre, pre_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat, xhat_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), xhat_hand, atol=1e-5, rtol=1e-5)


def test_loss_is_summed_l2_plus_l1_by_hand():
    sae = small_sae()
    x = torch.randn(5, 12)
    _, f, x_hat = sae_forward_train(sae, x)
    loss, mse, l1 = standard_loss(x, f, x_hat, 0.7)
    mse_hand = sum(((x_hat[b] - x[b]) ** 2).sum() for b in range(5)) / 5
    l1_hand = sum(f[b].abs().sum() for b in range(5)) / 5
    torch.testing.assert_close(mse, mse_hand)
    torch.testing.assert_close(loss, mse_hand + 0.7 * l1_hand)


def test_hand_written_gradients_match_autograd():
    sae = small_sae(d_in=16, d_sae=48)
    x = torch.randn(64, 16)
    # autograd on the loss written independently with einsum
    pre = torch.einsum("bd,ds->bs", x - sae.b_dec, sae.W_enc) + sae.b_enc
    f = torch.relu(pre)
    x_hat = torch.einsum("bs,sd->bd", f, sae.W_dec) + sae.b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean() + 0.3 * f.abs().sum(-1).mean()
    grads = torch.autograd.grad(loss, [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec])
    out = standard_step_grads(sae, x, 0.3)
    torch.testing.assert_close(out["loss"], loss.detach(), atol=1e-4, rtol=1e-5)
    for p, g in zip([sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec], grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_parallel_gradient_removed_and_rows_unit_norm_after_steps():
    sae = small_sae()
    opt = make_optimizer(sae, TrainConfig(layers=[0], lr=1e-2))
    x = torch.randn(32, 12)
    for _ in range(5):
        opt.zero_grad()
        standard_step_grads(sae, x, 0.1)
        remove_parallel_grad(sae)
        dots = (sae.W_dec.grad * sae.W_dec).sum(-1)
        assert dots.abs().max() < 1e-6
        opt.step()
        sae.set_decoder_norm_to_unit()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(40))


def test_topk_keeps_k_latents_and_aux_loss_by_hand():
    sae = small_sae("topk", k=3)
    x = torch.randn(9, 12)
    pre, f, x_hat = sae_forward_train(sae, x)
    assert ((f > 0).sum(-1) <= 3).all() and ((f > 0).sum(-1) >= 1).any()
    dead = torch.zeros(40, dtype=torch.bool)
    assert topk_aux_loss(sae, x, pre, x_hat, dead, 4).item() == 0.0
    dead[:10] = True
    aux = topk_aux_loss(sae, x, pre, x_hat, dead, 4)
    # by hand: per row, the 4 largest dead pre-activations (as they are, SAELens's AuxK) decode the residual
    total = 0.0
    for b in range(9):
        vals, idx = pre[b, :10].topk(4)
        e_hat = (vals[:, None] * sae.W_dec[idx]).sum(0)
        total += ((e_hat - (x[b] - x_hat[b])) ** 2).sum()
    torch.testing.assert_close(aux, total / 9, atol=1e-5, rtol=1e-5)


def test_lr_warmup_and_rewarm():
    assert lr_at(0, 1.0, 10, 0) == 0.1
    assert lr_at(9, 1.0, 10, 0) == 1.0
    assert lr_at(50, 1.0, 10, 0) == 1.0
    assert lr_at(50, 1.0, 10, 50) == 0.1  # just resampled


def test_resampling_revives_dead_features():
    sae = small_sae(d_sae=40)
    with torch.no_grad():
        sae.b_enc[:8] = -1e3  # features 0..7 can never fire
    opt = make_optimizer(sae, TrainConfig(layers=[0]))
    x = torch.randn(256, 12) * 2
    opt.zero_grad()
    standard_step_grads(sae, x, 0.1)
    opt.step()
    sae.set_decoder_norm_to_unit()
    assert (sae.encode(x)[:, :8] > 0).sum() == 0
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:8] = True
    alive_norm = sae.W_enc[:, 8:].norm(dim=0).mean()
    n = resample_dead(sae, opt, dead, x, torch.Generator().manual_seed(0))
    assert n == 8
    torch.testing.assert_close(sae.W_dec[:8].norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(sae.W_enc[:, :8].norm(dim=0), torch.full((8,), 0.2) * alive_norm)
    # encoder column points along the decoder row, each row is the direction of some input minus b_dec
    cos = torch.nn.functional.cosine_similarity(sae.W_enc[:, :8].T, sae.W_dec[:8], dim=-1)
    torch.testing.assert_close(cos, torch.ones(8))
    dirs = (x - sae.b_dec) / (x - sae.b_dec).norm(dim=-1, keepdim=True)
    assert ((sae.W_dec[:8] @ dirs.T).max(dim=1).values > 1 - 1e-5).all()
    assert (sae.b_enc[:8] == 0).all()
    state = opt.state[sae.W_enc]
    assert (state["exp_avg"][:, :8] == 0).all() and (state["exp_avg_sq"][:, :8] == 0).all()
    assert (sae.encode(x)[:, :8] > 0).any(0).all()  # every revived feature now fires on some input


def test_buffer_refills_half_when_half_consumed_and_loses_nothing():
    counter = {"next": 0}

    def produce() -> torch.Tensor:  # [1 layer, 10 tokens, d_in 1], values 0, 1, 2, ...
        start = counter["next"]
        counter["next"] += 10
        return torch.arange(start, start + 10, dtype=torch.float32).reshape(1, 10, 1)

    buf = ActivationBuffer(produce, 1, 1, capacity=40, batch_size=5, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    first = [buf.next_batch() for _ in range(4)]  # half of 40 consumed, no refill yet
    assert counter["next"] == 40 and buf.refills == 0
    for b in first:
        seen += b.flatten().long().tolist()
    fifth = buf.next_batch()
    assert buf.refills == 1 and counter["next"] == 60  # the 20 consumed slots were refilled
    seen += fifth.flatten().long().tolist()
    for _ in range(60):
        seen += buf.next_batch().flatten().long().tolist()
    assert len(seen) == len(set(seen))  # no activation served twice
    still = set(buf.storage.flatten().long().tolist()) | set(buf.pending.flatten().long().tolist())
    assert set(range(counter["next"])) == set(seen) | still  # and none lost


def test_zsource_matches_capture_z_and_stops_early(tiny_bridge):
    """On the bridge (whose modules can be hooked): ZSource's pass never runs the last layer's MLP."""
    rows = torch.randint(1, tiny_bridge.d_vocab, (6, 16))
    src = ZSource(tiny_bridge, rows, [0, 1], rows_per_pass=3, seed=0)
    calls: list[str] = []
    handle = tiny_bridge.bridge.blocks[1].mlp.register_forward_hook(lambda *a: calls.append("mlp1"))
    try:
        chunk = src.next_chunk()
        assert calls == []  # layer 1's MLP never ran
        with torch.no_grad():
            tiny_bridge.bridge(rows[:1])
        assert calls == ["mlp1"]  # (the hook itself works)
    finally:
        handle.remove()
    order = src._epoch_order(0)[:3]
    ref = tiny_bridge.capture_z(rows[order], [0, 1])
    assert chunk.shape == (2, 3 * 15, tiny_bridge.d_z)  # the BOS position of each row is left out
    torch.testing.assert_close(chunk[0], ref[0][:, 1:].reshape(-1, tiny_bridge.d_z), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk[1], ref[1][:, 1:].reshape(-1, tiny_bridge.d_z), atol=1e-5, rtol=1e-5)
    keep_all = ZSource(tiny_bridge, rows, [0], rows_per_pass=3, seed=0, skip_bos=False).next_chunk()
    torch.testing.assert_close(keep_all[0], ref[0].reshape(-1, tiny_bridge.d_z), atol=1e-5, rtol=1e-5)


def test_random_sae_helper_fits_training_forward(tiny_model):
    sae = random_sae(tiny_model, 1, d_sae=32)
    x = torch.randn(4, tiny_model.d_z)
    torch.testing.assert_close(sae_forward_train(sae, x)[2], sae(x), atol=1e-5, rtol=1e-5)
