"""The phenomena the paper studies, measured on any model: induction, previous-token heads, IOI, held-out loss.

These numbers go into the embedded default's MODEL_CARD.md and are recomputed by the tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from sae.experiments import ioi_data
from sae.engine.models import LoadedModel


def repeated_random_tokens(model: LoadedModel, n: int, span: int, seed: int) -> torch.Tensor:
    """`[n, 1 + 2*span]`: BOS, then `span` random ids, then the same ids again."""
    g = torch.Generator().manual_seed(seed)
    low = 1 if model.bos_token_id == 0 else 0
    r = torch.randint(low, model.d_vocab, (n, span), generator=g)
    bos = torch.full((n, 1), model.bos_token_id, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1).to(model.device)


def induction_score_from_pattern(pattern: torch.Tensor, span: int) -> torch.Tensor:
    """Mean attention from each second-copy query q to key q - span + 1 (the token after its first copy).

    pattern: `[..., query, key]` over `[BOS, r, r]` with `len(r) == span`. Returns `[...]`.
    """
    q = torch.arange(span + 1, 2 * span + 1)
    return pattern[..., q, q - span + 1].mean(-1)


def prev_token_score_from_pattern(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query t >= 1 to key t - 1. pattern: `[..., query, key]` -> `[...]`."""
    t = torch.arange(1, pattern.shape[-1])
    return pattern[..., t, t - 1].mean(-1)


@dataclass
class InductionResult:
    scores: list[list[float]]  # [layer][head]
    best_head: tuple[int, int]
    best_score: float
    loss_first_copy: float  # mean next-token loss (nats) on the first copy
    loss_second_copy: float  # ... on the repeated copy


def induction(model: LoadedModel, n: int = 16, span: int = 30, seed: int = 0) -> InductionResult:
    toks = repeated_random_tokens(model, n, span, seed)
    pats = model.attention_patterns(toks)  # [layer, batch, head, q, k]
    scores = induction_score_from_pattern(pats, span).mean(1)  # [layer, head]
    with torch.no_grad():
        logits = model.bridge(toks).float()
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]  # [batch, pos-1]
    flat = int(scores.argmax())
    best = (flat // model.n_heads, flat % model.n_heads)
    return InductionResult(
        scores=scores.tolist(),
        best_head=best,
        best_score=float(scores.max()),
        loss_first_copy=float(nll[:, 1:span].mean()),  # predictions of r[1:] from the first copy
        loss_second_copy=float(nll[:, span:].mean()),  # predictions of the repeated copy
    )


@dataclass
class PrevTokenResult:
    scores: list[list[float]]
    best_head: tuple[int, int]
    best_score: float


def previous_token(model: LoadedModel, rows: torch.Tensor) -> PrevTokenResult:
    """rows: held-out token rows `[batch, pos]`."""
    pats = model.attention_patterns(rows)
    scores = prev_token_score_from_pattern(pats).mean(1)
    flat = int(scores.argmax())
    return PrevTokenResult(scores.tolist(), (flat // model.n_heads, flat % model.n_heads), float(scores.max()))


@dataclass
class IOIResult:
    n_prompts: int
    logit_diff: float
    logit_diff_abba: float
    logit_diff_baba: float
    accuracy: float  # IO logit above S logit
    split: str


def ioi_logit_diffs(
    prompts: list[ioi_data.IOIPrompt],
    encode: Callable[[str], list[int]],
    bos_id: int,
    last_logits: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """logit(IO) - logit(S) at the last position of each prompt; `last_logits([1, pos]) -> [d_vocab]`."""
    diffs = []
    with torch.no_grad():
        for p in prompts:
            last = last_logits(torch.tensor([ioi_data.prompt_ids(encode, p, bos_id)])).float()
            diffs.append(float(last[ioi_data.name_token(encode, p.io)] - last[ioi_data.name_token(encode, p.s)]))
    return diffs


def ioi_logit_diff(model: LoadedModel, n: int = 200, seed: int = 0, split: str = "heldout") -> IOIResult:
    names = ioi_data.require_single_token_names(model.encode, model.name)
    prompts = ioi_data.generate(n, seed=seed, names=names, split=split)
    d = torch.tensor(
        ioi_logit_diffs(prompts, model.encode, model.bos_token_id, lambda t: model.bridge(t.to(model.device))[0, -1])
    )
    o = torch.tensor([p.order == "ABBA" for p in prompts])
    return IOIResult(
        n_prompts=n,
        logit_diff=float(d.mean()),
        logit_diff_abba=float(d[o].mean()),
        logit_diff_baba=float(d[~o].mean()),
        accuracy=float((d > 0).float().mean()),
        split=split,
    )


def mean_loss(model: LoadedModel, rows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token loss (nats) over rows `[n, pos]`, BOS-prediction excluded."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = rows[i : i + batch].to(model.device)
            logits = model.bridge(b).float()
            nll = -logits[:, :-1].log_softmax(-1).gather(-1, b[:, 1:, None])[..., 0]
            total += float(nll.sum())
            count += nll.numel()
    return total / count


def unigram_loss(train_rows: torch.Tensor, eval_rows: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats) of an add-one-smoothed unigram model fit on `train_rows`, on `eval_rows[:, 1:]`."""
    counts = torch.bincount(train_rows[:, 1:].flatten(), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[eval_rows[:, 1:].flatten()].mean())


@dataclass
class Phenomena:
    induction: InductionResult
    previous_token: PrevTokenResult
    ioi: IOIResult
    heldout_loss: float
    unigram_loss: float
    heldout_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_all(
    model: LoadedModel, heldout_rows: torch.Tensor, train_rows: torch.Tensor, n_ioi: int = 200
) -> Phenomena:
    return Phenomena(
        induction=induction(model),
        previous_token=previous_token(model, heldout_rows[:32]),
        ioi=ioi_logit_diff(model, n=n_ioi),
        heldout_loss=mean_loss(model, heldout_rows),
        unigram_loss=unigram_loss(train_rows, heldout_rows, model.d_vocab),
        heldout_tokens=int(heldout_rows[:, 1:].numel()),
    )


def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else str(x)
