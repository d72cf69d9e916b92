"""Evaluating SAEs the field's standard way, through the model (`LoadedModel.logits_with_z_hooks`).

The definitions are SAELens 6's `run_evals` (checked against its own output in tests/reference): for each SAE on
layer L, over the same token rows and the kept positions (see the BOS rule below):
- reconstruction: L0 (mean number of non-zero features per token), explained variance
  `1 - mean_t |x - x_hat|^2 / (mean_t |x|^2 - |mean_t x|^2)` (SAELens's `explained_variance`), normalised MSE
  `sum|x - x_hat|^2 / sum|x|^2`;
- CE loss (next-token, mean over predictions) clean, with the SAE's reconstruction spliced into hook_z, and with
  hook_z zero-ablated for all heads of that layer; CE loss recovered `(CE_zero - CE_sae) / (CE_zero - CE_clean)`
  (SAELens's `ce_loss_score`);
- KL(clean || spliced) and KL(clean || zero-ablated), mean over positions; KL score `(KL_zero - KL) / KL_zero`;
- dead fraction (never fired on these tokens), dense fraction (fires on > 10% of tokens).

**The BOS rule.** By default positions holding a special token (BOS, EOS, PAD: one vector repeated in every row,
which inflates explained variance) are left out: their z is not replaced and they count in no average, as SAELens
does with `exclude_special_tokens=True`; zero-ablation zeroes every position either way. Training
(`ZSource`) and dashboards leave the BOS position out by the same rule. `exclude_special_tokens=False` (`attnscope
eval --include-bos`) counts every position.

Convention: z is HookedTransformer's processed hook_z (`sae.engine.models`). "Zero-ablated" sets that z to 0, as
zero-ablating hook_z does in a processed HookedTransformer, the setting the paper's numbers come from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sae.engine.jobs import CancelToken
from sae.engine.autoencoder import SAE
from sae.engine.jobs import ProgressFn, Steps

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
    kl_abl: float = float("nan")  # KL(clean || zero-ablated)
    kl_score: float | None = None  # (kl_abl - kl) / kl_abl, SAELens's kl_div_score
    special_tokens_excluded: list[int] = field(default_factory=list)
    bos_rule: str = ""
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


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over the `[batch, pos-1]` predictions (logits `[batch, pos, vocab]`);
    with `keep [batch, pos]` only predictions made at kept positions count."""
    logp = logits[:, :-1].float().log_softmax(-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return nll.sum() if keep is None else nll[keep[:, :-1]].sum()


def kl_sum(clean_logits: torch.Tensor, other_logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Summed KL(clean || other) over the `[batch, pos]` next-token distributions (kept positions only)."""
    lp = clean_logits.float().log_softmax(-1)
    lq = other_logits.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return kl.sum() if keep is None else kl[keep].sum()


SPECIAL_TOKEN_ATTRS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")


def special_token_ids(tokenizer: Any) -> list[int]:
    """The structural special tokens of a tokenizer (BOS, EOS, PAD, SEP, decoder start), as SAELens's
    `get_special_token_ids` reads them."""
    ids = {getattr(tokenizer, a, None) for a in SPECIAL_TOKEN_ATTRS}
    return sorted(int(i) for i in ids if i is not None)


BOS_RULE_EXCLUDED = (
    "positions holding a special token (BOS, EOS, PAD) are left out: not spliced, not counted in any average "
    "(SAELens run_evals' exclude_special_tokens=True; not the paper's convention, which counts BOS: --include-bos); "
    "zero-ablation still zeroes every position"
)
BOS_RULE_INCLUDED = ("every position counts, the BOS position included (the paper's CE-loss-recovered convention; "
                     "SAELens run_evals' exclude_special_tokens=False)")


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
        self.kl_zero = 0.0


@torch.no_grad()
def evaluate_saes(
    model,
    saes: dict[int, SAE],
    token_rows: torch.Tensor,
    batch_rows: int = 8,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    exclude_special_tokens: bool = True,
) -> list[EvalResult]:
    """Evaluate every SAE in `saes {layer: SAE}` on `token_rows [rows, pos]` (BOS at position 0).

    One clean pass per batch serves all layers; each layer then adds a spliced and a zero-ablated pass.
    `exclude_special_tokens` (the default) is SAELens run_evals' rule: positions holding a special token are
    neither spliced nor counted (see `BOS_RULE_EXCLUDED`). Reports `Progress(job="eval", unit="rows")` after each
    batch; a cancelled `cancel` raises `Cancelled` between batches.
    """
    if token_rows.dim() != 2 or token_rows.shape[0] == 0:
        raise ValueError("no token rows to evaluate on")
    special = special_token_ids(model.tokenizer) if exclude_special_tokens else []
    acc = {layer: _Accum(sae) for layer, sae in saes.items()}
    ce_clean = 0.0
    n_pred = 0
    n_rows = token_rows.shape[0]
    steps = Steps("eval", n_rows, on_progress, cancel, unit="rows")
    for start in range(0, n_rows, batch_rows):
        tokens = token_rows[start : start + batch_rows].to(model.device)
        keep = ~torch.isin(tokens, torch.tensor(special, dtype=tokens.dtype, device=tokens.device))  # [batch, pos]
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int):
            def fn(z: torch.Tensor) -> torch.Tensor:
                captured[layer] = z.detach().float()
                return z

            return fn

        clean = model.logits_with_z_hooks(tokens, {layer: capture(layer) for layer in saes})
        ce_clean += next_token_ce(clean, tokens, keep).item()
        n_pred += int(keep[:, :-1].sum())
        for layer, sae in saes.items():
            a = acc[layer]
            z = captured[layer].to(sae.W_enc.device)  # [batch, pos, d_in]
            # one SAE pass serves the statistics and the splice: layers below L are untouched in the spliced run,
            # so the z arriving there is this clean z
            f_all, x_hat_all = sae.encode_and_reconstruct(z.reshape(-1, sae.cfg.d_in))
            flat_keep = keep.reshape(-1).to(z.device)
            x, f, x_hat = z.reshape(-1, sae.cfg.d_in)[flat_keep], f_all[flat_keep], x_hat_all[flat_keep]
            active = f != 0
            a.fired += active.sum(0).double().cpu()
            a.active += active.sum().item()
            a.sse += (x_hat - x).double().pow(2).sum().item()
            a.sum_x += x.sum(0).double().cpu()
            a.sum_x2 += x.double().pow(2).sum().item()
            a.n += x.shape[0]
            recon = x_hat_all.reshape(z.shape)

            def splice(zz: torch.Tensor, r: torch.Tensor = recon, k: torch.Tensor = keep) -> torch.Tensor:
                return torch.where(k[..., None].to(zz.device), r.to(zz.device, zz.dtype), zz)

            spliced = model.logits_with_z_hooks(tokens, {layer: splice})
            a.ce_sae += next_token_ce(spliced, tokens, keep).item()
            a.kl += kl_sum(clean, spliced, keep).item()
            zero = model.logits_with_z_hooks(tokens, {layer: torch.zeros_like})
            a.ce_zero += next_token_ce(zero, tokens, keep).item()
            a.kl_zero += kl_sum(clean, zero, keep).item()
        steps.step(min(batch_rows, n_rows - start))
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
                kl_abl=a.kl_zero / n,
                kl_score=(a.kl_zero - a.kl) / a.kl_zero if a.kl_zero > 0 else None,
                dead_fraction=(a.fired == 0).double().mean().item(),
                dense_fraction=(density > DENSE_THRESHOLD).double().mean().item(),
                tokens=a.n,
                special_tokens_excluded=special,
                bos_rule=BOS_RULE_EXCLUDED if exclude_special_tokens else BOS_RULE_INCLUDED,
                path=str(sae.cfg.extra.get("path", "")),
                log10_density=torch.log10(density.float() + 1e-10),
            )
        )
    return results
