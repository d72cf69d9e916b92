"""Evaluating SAEs the field's standard way, through the model (`LoadedModel.logits_with_z_hooks`).

For each SAE on layer L, over the same token rows:
- reconstruction: L0 (mean active features per token), explained variance
  `1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2`, normalised MSE `sum|x - x_hat|^2 / sum|x|^2`;
- CE loss (next-token, mean over positions) clean, with the SAE's reconstruction spliced into hook_z, and with
  hook_z zero-ablated for all heads of that layer; CE loss recovered `(CE_zero - CE_sae) / (CE_zero - CE_clean)`;
- KL(clean || spliced) of the next-token distributions, mean over positions;
- dead fraction (never fired on these tokens), dense fraction (fires on > 10% of tokens).

Convention: z is attnscope's value-bias-free z (HookedTransformer with folded value biases). "Zero-ablated" sets
that z to 0, so the layer's attention output becomes `b_O + W_O b_V`, exactly what zero-ablating hook_z does in
a HookedTransformer with value biases folded into b_O, the setting the paper's numbers come from.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from sae.engine.jobs import Cancelled, CancelToken
from sae.engine.autoencoder import SAE

DENSE_THRESHOLD = 0.1


@dataclass
class EvalResult:
    """Metrics of one SAE (one layer) on `tokens` tokens. `log10_density` is per feature, not in `to_dict()`."""

    hook: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    l0: float
    explained_variance: float
    nmse: float
    ce_clean: float
    ce_sae: float
    ce_zero_abl: float
    ce_loss_recovered: float | None
    kl: float
    dead_fraction: float
    dense_fraction: float
    tokens: int
    path: str = ""
    log10_density: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("log10_density")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def ce_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float | None:
    """`(CE_zero - CE_sae) / (CE_zero - CE_clean)`; None when zero-ablation changes nothing (undefined)."""
    denom = ce_zero - ce_clean
    if abs(denom) < 1e-9:
        return None
    return (ce_zero - ce_sae) / denom


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over `[batch, pos-1]` predictions (logits `[batch, pos, vocab]`)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).sum()


def kl_sum(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(clean || other) over all `[batch, pos]` next-token distributions."""
    lp = clean_logits.float().log_softmax(-1)
    lq = other_logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum()


class _Accum:
    """Running sums for one SAE."""

    def __init__(self, sae: SAE) -> None:
        d, s = sae.cfg.d_in, sae.cfg.d_sae
        self.fired = torch.zeros(s, dtype=torch.float64)
        self.active = 0.0
        self.sse = 0.0
        self.sum_x = torch.zeros(d, dtype=torch.float64)
        self.sum_x2 = 0.0
        self.n = 0
        self.ce_sae = 0.0
        self.ce_zero = 0.0
        self.kl = 0.0


@torch.no_grad()
def evaluate_saes(
    model,
    saes: dict[int, SAE],
    token_rows: torch.Tensor,
    batch_rows: int = 8,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
) -> list[EvalResult]:
    """Evaluate every SAE in `saes {layer: SAE}` on `token_rows [rows, pos]` (BOS at position 0).

    One clean pass per batch serves all layers; each layer then adds a spliced and a zero-ablated pass.
    `cancel` is checked before every batch; a cancelled evaluation raises `Cancelled` (no partial metrics).
    """
    if token_rows.dim() != 2 or token_rows.shape[0] == 0:
        raise ValueError("no token rows to evaluate on")
    acc = {layer: _Accum(sae) for layer, sae in saes.items()}
    ce_clean = 0.0
    n_pred = 0
    n_rows = token_rows.shape[0]
    for start in range(0, n_rows, batch_rows):
        if cancel is not None and (cancel.cancelled if isinstance(cancel, CancelToken) else
                                   cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
            raise Cancelled("evaluation cancelled")  # never a result from part of the rows
        tokens = token_rows[start : start + batch_rows].to(model.device)
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int):
            def fn(z: torch.Tensor) -> torch.Tensor:
                captured[layer] = z.detach().float()
                return z

            return fn

        clean = model.logits_with_z_hooks(tokens, {layer: capture(layer) for layer in saes})
        ce_clean += next_token_ce(clean, tokens).item()
        n_pred += tokens.shape[0] * (tokens.shape[1] - 1)
        for layer, sae in saes.items():
            a = acc[layer]
            x = captured[layer].reshape(-1, sae.cfg.d_in).to(sae.W_enc.device)
            f = sae.encode(x)
            x_hat = sae.decode(f)
            active = f > 0
            a.fired += active.sum(0).double().cpu()
            a.active += active.sum().item()
            a.sse += (x_hat - x).pow(2).sum().item()
            a.sum_x += x.sum(0).double().cpu()
            a.sum_x2 += x.double().pow(2).sum().item()
            a.n += x.shape[0]
            spliced = model.logits_with_z_hooks(tokens, {layer: lambda z, s=sae: s(z).to(z.dtype)})
            a.ce_sae += next_token_ce(spliced, tokens).item()
            a.kl += kl_sum(clean, spliced).item()
            zero = model.logits_with_z_hooks(tokens, {layer: torch.zeros_like})
            a.ce_zero += next_token_ce(zero, tokens).item()
        if on_progress is not None:
            on_progress({"rows": min(start + batch_rows, n_rows), "total_rows": n_rows})
    results = []
    clean_mean = ce_clean / max(n_pred, 1)
    for layer, sae in saes.items():
        a = acc[layer]
        n = max(a.n, 1)
        sst = a.sum_x2 - (a.sum_x.pow(2).sum().item() / n)
        density = a.fired / n
        ce_sae = a.ce_sae / max(n_pred, 1)
        ce_zero = a.ce_zero / max(n_pred, 1)
        results.append(
            EvalResult(
                hook=sae.cfg.hook_name,
                layer=layer,
                d_in=sae.cfg.d_in,
                d_sae=sae.cfg.d_sae,
                architecture=sae.cfg.architecture,
                l0=a.active / n,
                explained_variance=1.0 - a.sse / sst if sst > 0 else float("nan"),
                nmse=a.sse / a.sum_x2 if a.sum_x2 > 0 else float("nan"),
                ce_clean=clean_mean,
                ce_sae=ce_sae,
                ce_zero_abl=ce_zero,
                ce_loss_recovered=ce_recovered(clean_mean, ce_sae, ce_zero),
                kl=a.kl / n,
                dead_fraction=(a.fired == 0).double().mean().item(),
                dense_fraction=(density > DENSE_THRESHOLD).double().mean().item(),
                tokens=a.n,
                path=str(sae.cfg.extra.get("path", "")),
                log10_density=torch.log10(density.float() + 1e-10),
            )
        )
    return results
