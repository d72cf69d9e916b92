"""Adam for the SAE trainer, written with in-place tensor operations.

It is `torch.optim.Adam`'s update (no weight decay, amsgrad or maximize) in the order of torch's single-tensor
implementation, so it gives the same parameters to float rounding (tests/training/test_adam.py runs both side by
side), and its `state_dict` has torch's format, so a checkpoint moves between the two. Why not torch's: building any
`torch.optim.Optimizer` imports `torch._dynamo` (about 1.4 s of CPU, measured on this machine), which a training
process otherwise never needs; and the update itself is a handful of passes over 2 x d_in x d_sae values either way.

Shapes: any; `params` are the SAE's parameters (`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

# the keys torch.optim.Adam's param groups carry (written so that torch can read our state_dict back)
TORCH_GROUP_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
    "differentiable": False, "fused": None, "decoupled_weight_decay": False,
}


class Adam:
    """`torch.optim.Adam(params, lr, betas, eps)` for what the trainer uses: `param_groups` (one; its "lr" may be
    set between steps), `state[param]` ("step", "exp_avg", "exp_avg_sq"), `step()`, `zero_grad()`,
    `state_dict()` and `load_state_dict()`."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.param_groups: list[dict[str, Any]] = [
            {"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps, **TORCH_GROUP_DEFAULTS}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a `.grad`."""
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in self.params:
            grad = p.grad
            if grad is None:
                continue
            st = self.state.get(p)
            if not st:
                st = self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}
            st["step"] += 1
            step = float(st["step"])
            exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: states by parameter index, the group with `params` as indices."""
        index = {id(p): i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[id(p)]: dict(st) for p, st in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Read a state written by `state_dict` or by `torch.optim.Adam` over the same parameters."""
        groups = sd["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the saved optimizer state does not match these parameters")
        saved = groups[0]
        for key in ("lr", "betas", "eps"):
            if key in saved:
                self.param_groups[0][key] = tuple(saved[key]) if key == "betas" else saved[key]
        self.state = {}
        for slot, i in enumerate(saved["params"]):
            st = sd["state"].get(i)
            if st is None:
                continue
            p = self.params[slot]
            self.state[p] = {"step": torch.as_tensor(st["step"], dtype=torch.float32).clone(),
                             "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                             "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()}
