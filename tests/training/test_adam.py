"""The trainer's hand-written Adam against `torch.optim.Adam` (single-tensor and fused), step by step, and its state
against torch's format both ways."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sae.engine.training.adam import Adam


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(12, 40, generator=g)), torch.nn.Parameter(torch.randn(40, 12, generator=g)),
            torch.nn.Parameter(torch.randn(40, generator=g)), torch.nn.Parameter(torch.randn(12, generator=g))]


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) * (0.1 + step % 3) for p in params]


@pytest.mark.parametrize("torch_kwargs", [{"foreach": False}, {"fused": True}])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.9999)])
def test_same_parameters_as_torch_adam(torch_kwargs, betas):
    mine, ref = _params(), _params()
    ours = Adam(mine, lr=3e-3, betas=betas)
    theirs = torch.optim.Adam(ref, lr=3e-3, betas=betas, **torch_kwargs)
    for step in range(40):
        lr = 3e-3 * min(1.0, (step + 1) / 10)  # the trainer sets lr between steps (warm-up)
        ours.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = lr
        for p, q, g in zip(mine, ref, _grads(step, mine)):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 7:
            mine[2].grad = ref[2].grad = None  # a parameter without a gradient is left alone, as torch does
        ours.step()
        theirs.step()
        for p, q in zip(mine, ref):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-6)
    for p, q in zip(mine, ref):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], atol=1e-7, rtol=1e-6)
        assert float(ours.state[p]["step"]) == float(theirs.state[q]["step"])


def test_state_dict_moves_between_torch_and_ours():
    mine, ref = _params(), _params()
    theirs = torch.optim.Adam(ref, lr=1e-3)
    for step in range(3):
        for q, g in zip(ref, _grads(step, ref)):
            q.grad = g
        theirs.step()
    with torch.no_grad():
        for p, q in zip(mine, ref):
            p.copy_(q)
    ours = Adam(mine, lr=5.0)
    ours.load_state_dict(theirs.state_dict())  # a checkpoint written with torch's Adam resumes here
    assert ours.param_groups[0]["lr"] == 1e-3
    for step in range(3, 6):
        for p, q, g in zip(mine, ref, _grads(step, ref)):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(mine, ref):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-6)
    back = torch.optim.Adam(_params(), lr=1e-3)
    back.load_state_dict(ours.state_dict())  # and ours reads back into torch's
    assert set(back.state_dict()["state"]) == {0, 1, 2, 3}
    torch.testing.assert_close(back.state_dict()["state"][1]["exp_avg"], ours.state[mine[1]]["exp_avg"])
    with pytest.raises(ValueError):
        Adam(mine[:2]).load_state_dict(ours.state_dict())


def test_building_the_trainers_optimizer_does_not_import_dynamo():
    code = ("import sys, torch\nfrom sae.engine.training.loop import make_optimizer\n"
            "from sae.engine.training.config import TrainConfig\nfrom sae.engine.autoencoder import SAE, SAEConfig\n"
            "sae = SAE(SAEConfig(d_in=4, d_sae=8, hook_name='blocks.0.attn.hook_z', architecture='topk', k=2))\n"
            "opt = make_optimizer(sae, TrainConfig(layers=[0]))\n"
            "for p in sae.parameters():\n    p.grad = torch.ones_like(p)\n"
            "opt.step()\nprint('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
