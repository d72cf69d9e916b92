"""The CUDA paths (run by scripts/gpu_check.py on a GPU machine; skipped elsewhere): training in fp32 and under
bf16 autocast lowers the loss, the saved SAE loads back equal, and the hand-written steps match autograd on CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sae.engine.formats import load_sae
from sae.engine.training.loop import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support, dist_worker
from support import token_rows

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CTX = 16


@pytest.fixture(scope="module")
def cuda_model(tiny_model_dir):
    from sae.engine.models import load_model

    return load_model(str(tiny_model_dir), device="cuda")


@pytest.fixture(scope="module")
def rows(cuda_model):
    return token_rows(cuda_model, 64, CTX)


@cuda
@pytest.mark.parametrize("architecture", ["standard", "topk"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_cuda_training_lowers_the_loss_and_saves(cuda_model, rows, tmp_path, architecture, autocast):
    events = []
    cfg = TrainConfig(layers=[0, 1], architecture=architecture, k=8, d_sae=128, batch_size=128, context_size=CTX,
                      total_tokens=128 * 40, rows_per_pass=8, buffer_batches=4, warmup_steps=2, checkpoint_every=20,
                      log_every=1, lr=3e-3, l1_coeff=1.0, autocast=autocast)
    trainer = Trainer(cuda_model, rows, cfg, tmp_path, on_progress=events.append)
    assert trainer.device.type == "cuda"
    outcome = trainer.run()
    steps = [e for e in events if e.note == "step"]
    assert steps[-1].metrics["mse"] < 0.7 * steps[0].metrics["mse"]
    assert all(torch.isfinite(p).all() for u in trainer.units for p in u.sae.parameters())
    for layer, sae in outcome.saes.items():
        loaded = load_sae(tmp_path / f"blocks.{layer}.attn.hook_z", device="cuda")
        torch.testing.assert_close(loaded.W_dec, sae.W_dec.to("cuda"))
        x = torch.randn(32, sae.cfg.d_in, device="cuda")
        torch.testing.assert_close(loaded(x), sae.to("cuda")(x), atol=1e-4, rtol=1e-4)
    assert outcome.step == 40


@cuda
def test_cuda_hand_written_standard_step_matches_autograd():
    from sae.engine.autoencoder import SAE, SAEConfig
    from sae.engine.training.steps import (
        sae_forward_train,
        standard_loss,
        standard_step_grads,
    )

    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=64, d_sae=256, hook_name="blocks.0.attn.hook_z")).cuda()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(512, 64, device="cuda")
    standard_step_grads(sae, x, 0.5)
    hand = [p.grad.clone() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)]
    for p in sae.parameters():
        p.grad = None
    _, f, x_hat = sae_forward_train(sae, x)
    loss, _, _ = standard_loss(x, f, x_hat, 0.5)
    loss.backward()
    for h, p in zip(hand, (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)):
        torch.testing.assert_close(h, p.grad, atol=1e-4, rtol=1e-3)


@cuda
def test_nccl_ranks_equal_one_process(tiny_model_dir, cuda_model, tmp_path):
    """Up to 2 ranks (one per GPU; one rank on a one-GPU machine, still through an nccl process group) give the
    weights of one process with the same global batch and data shards."""
    from support import N_ROWS, assert_same_weights, base_cfg, launch

    nproc = min(2, torch.cuda.device_count())
    rows = token_rows(cuda_model, N_ROWS, CTX)
    Trainer(cuda_model, rows, TrainConfig(**base_cfg()), tmp_path / "one").run()
    spec = {"model_dir": str(tiny_model_dir), "out_dir": str(tmp_path / "nccl"), "cfg": base_cfg(), "n_rows": N_ROWS,
            "device": "cuda"}
    assert launch(spec, tmp_path, nproc=nproc) == [0] * nproc
    assert_same_weights(tmp_path / "one", tmp_path / "nccl", atol=1e-4)
    saved = load_sae(tmp_path / "nccl" / "blocks.0.attn.hook_z").cfg.extra["training"]
    assert saved["world_size"] == nproc and saved["data_shards"] == 2
