"""Reviving dead features: Anthropic-style resampling (standard SAEs) and the dead-latent tracker shared by AuxK
(top-k SAEs) and the progress reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sae.engine.autoencoder import SAE

if TYPE_CHECKING:
    from sae.engine.training.adam import Adam


@torch.no_grad()
def resample_dead(
    sae: SAE, opt: Adam, dead: torch.Tensor, inputs: torch.Tensor, generator: torch.Generator
) -> int:
    """Anthropic-style resampling of the `dead [d_sae]` features from `inputs [n, d_in]`.

    Each dead feature gets an input sampled with probability proportional to the square of its squared
    reconstruction error: decoder row = normalised (x - b_dec), encoder column = the same direction scaled to
    0.2 x the mean alive encoder norm, b_enc = 0, and the Adam moments of those parameters are reset.
    Returns the number of features resampled.
    """
    idx = dead.nonzero().flatten()
    n = idx.numel()
    if n == 0:
        return 0
    x_hat = sae.forward(inputs)
    err = (x_hat - inputs).pow(2).sum(-1)
    p = err.pow(2)
    if not torch.isfinite(p).all() or p.sum() <= 0:
        p = torch.ones_like(p)
    pick = torch.multinomial(p.cpu().double(), n, replacement=n > p.numel(), generator=generator).to(inputs.device)
    dirs = inputs[pick] - sae.b_dec
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    sae.W_enc[:, idx] = (dirs * 0.2 * enc_norm).T
    sae.b_enc[idx] = 0.0
    for param, sel in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sel] = 0.0
    return n


class FiringTracker:
    """Per-feature firing counts of one SAE: tokens since each feature last fired, firings in the current
    resampling window, firings over the whole run. All `[d_sae]` on the SAE's device."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.window_fired = torch.zeros(d_sae, device=device)
        self.window_tokens = 0
        self.total_fired = torch.zeros(d_sae, device=device)
        self.total_tokens = 0

    @torch.no_grad()
    def update(self, fired: torch.Tensor, n_tokens: int) -> None:
        """`fired [d_sae]`: how many of this batch's `n_tokens` tokens each feature fired on."""
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired > 0, 0)
        self.window_fired += fired
        self.window_tokens += n_tokens
        self.total_fired += fired
        self.total_tokens += n_tokens

    def dead(self, dead_tokens: int) -> torch.Tensor:
        """`[d_sae]` bool: silent for at least `dead_tokens` tokens."""
        return self.tokens_since_fired >= dead_tokens

    def reset_window(self) -> None:
        self.window_fired.zero_()
        self.window_tokens = 0

    def window_dead(self, threshold: float) -> torch.Tensor:
        """`[d_sae]` bool: firing frequency over the current window at or below `threshold`."""
        return self.window_fired / max(self.window_tokens, 1) <= threshold

    def log10_density(self) -> torch.Tensor:
        return torch.log10(self.total_fired / max(self.total_tokens, 1) + 1e-10)

    def state_dict(self) -> dict:
        return {"tokens_since_fired": self.tokens_since_fired, "window_fired": self.window_fired,
                "window_tokens": self.window_tokens, "total_fired": self.total_fired,
                "total_tokens": self.total_tokens}

    def load_state_dict(self, s: dict) -> None:
        self.tokens_since_fired.copy_(s["tokens_since_fired"])
        self.window_fired.copy_(s["window_fired"])
        self.window_tokens = int(s["window_tokens"])
        self.total_fired.copy_(s["total_fired"])
        self.total_tokens = int(s["total_tokens"])
