"""The embedded default's phenomena, measured and written as markdown (for `attnscope zoo measure` and the card)."""

from __future__ import annotations

import torch

from sae.engine.models import LoadedModel


def heldout_and_train_rows(
    model: LoadedModel, max_heldout_rows: int = 256, max_train_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded corpus's held-out and train splits packed into `[rows, min(128, n_ctx)]` token ids."""
    from sae.engine.activations import pack_tokens
    from sae.zoo import corpus

    ctx = min(128, model.n_ctx)
    held = pack_tokens(corpus.documents("heldout"), model.encode, ctx, model.bos_token_id, max_rows=max_heldout_rows)
    train = pack_tokens(corpus.documents("train"), model.encode, ctx, model.bos_token_id, max_rows=max_train_rows)
    return held, train


def measure(model: LoadedModel, n_ioi: int = 200) -> dict:
    """Induction, previous-token, IOI and held-out loss figures of `model` (`sae.experiments.phenomena`)."""
    from sae.experiments import phenomena

    held, train = heldout_and_train_rows(model)
    ph = phenomena.measure_all(model, held, train, n_ioi=n_ioi)
    return {"model": model.name, **ph.to_dict()}


def phenomena_markdown(d: dict) -> str:
    ind, prev, ioi = d["induction"], d["previous_token"], d["ioi"]
    L, H = ind["best_head"]
    pl, ph = prev["best_head"]
    lines = [
        f"## Phenomena of {d['model']}",
        "",
        "| measurement | value | threshold |",
        "|---|---|---|",
        f"| induction score, best head {L}.{H} (repeated random tokens, attention to the token after the "
        f"first copy) | {ind['best_score']:.3f} | >= 0.5 |",
        f"| loss on first copy -> repeated copy (nats) | {ind['loss_first_copy']:.3f} -> "
        f"{ind['loss_second_copy']:.3f} | repeat far below |",
        f"| previous-token score, best head {pl}.{ph} (held-out text) | {prev['best_score']:.3f} | >= 0.5 |",
        f"| IOI logit diff IO - S ({ioi['n_prompts']} {ioi['split']} prompts, ABBA+BABA) | {ioi['logit_diff']:.3f} "
        f"| >= 1.0 |",
        f"| IOI logit diff ABBA / BABA | {ioi['logit_diff_abba']:.3f} / {ioi['logit_diff_baba']:.3f} | |",
        f"| IOI accuracy (IO above S) | {ioi['accuracy']:.3f} | |",
        f"| held-out loss (nats/token, {d['heldout_tokens']:,} tokens) | {d['heldout_loss']:.3f} | below unigram |",
        f"| unigram baseline (nats/token) | {d['unigram_loss']:.3f} | |",
    ]
    lines += _head_table("Per-head induction scores (rows = layers):", ind["scores"])
    lines += _head_table("Per-head previous-token scores:", prev["scores"])
    return "\n".join(lines)


def _head_table(title: str, scores: list[list[float]]) -> list[str]:
    """A blank line, `title`, and a markdown table of `scores [layer][head]`."""
    lines = ["", title, "", "| layer | " + " | ".join(f"head {h}" for h in range(len(scores[0]))) + " |",
             "|---|" + "---|" * len(scores[0])]
    return lines + [f"| {i} | " + " | ".join(f"{s:.2f}" for s in row) + " |" for i, row in enumerate(scores)]
