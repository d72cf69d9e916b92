"""`attnscope intervene "PROMPT" --layer L --feature F [--pos P|all] (--set V | --scale S | --ablate)`: change
feature activations (keeping the SAE's error term) and show what the model then predicts."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from sae.cli.common import FitTable as Table
from sae.cli.common import add_model_flags, add_output_flags, emit, out, positive_int
from sae.cli.features import md_table, non_negative_int, open_model_and_saes, show_token, warn


def position(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a position (0 = BOS, negative from the end) or 'all', got {text!r}") from None


def number(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "intervene",
        help="set, scale or ablate SAE features on a prompt and see the model's prediction change",
        description="Change feature F's activation at position P (default: every position where it fires) and "
        "rerun the model. The SAE's error term is kept, so only that feature changes: z' = z + (v - a) * W_dec[F]. "
        "Several --feature flags act together. Prints the next-token top-k before and after at the last position, "
        "the tokens whose logit changed most, the mean next-token loss before and after, and the later-layer "
        "features whose activation changed most.",
    )
    p.add_argument("prompt", help="the text to run")
    p.add_argument("--layer", type=non_negative_int, required=True, help="layer of the features")
    p.add_argument("--feature", type=non_negative_int, action="append", required=True,
                   help="feature id in that layer's SAE (repeat for several)")
    p.add_argument("--pos", type=position, default=None,
                   help="token position (0 = BOS, negative from the end) or 'all' (default: where the feature fires)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--set", type=number, metavar="V", help="set the activation to V")
    g.add_argument("--scale", type=number, metavar="S", help="multiply the activation by S")
    g.add_argument("--ablate", action="store_true", help="set the activation to 0")
    p.add_argument("--top", type=positive_int, default=10, help="tokens and features listed (default 10)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def edits_from_args(args: argparse.Namespace) -> list:
    from sae.analysis.intervene import Edit

    if args.ablate:
        mode, value = "ablate", 0.0
    elif args.scale is not None:
        mode, value = "scale", args.scale
    else:
        mode, value = "set", args.set
    return [Edit(f, mode, value, args.pos) for f in dict.fromkeys(args.feature)]


def run(args: argparse.Namespace) -> int:
    from sae.analysis.intervene import intervene

    model, saes = open_model_and_saes(args, args.layer, prompt=args.prompt)
    res = intervene(model, saes, args.prompt, args.layer, edits_from_args(args), top=args.top)
    if not res.positions:
        warn("the feature does not fire on this prompt, so nothing changed; name a position with --pos to set it there")
    emit(args, res.to_dict(), markdown, pretty)
    return 0


def _tables(d: dict) -> list[tuple[str, list[str], list[list[Any]]]]:
    toks = d["tokens"]
    k = len(d["top_before"])
    edits = [[f, p, show_token(toks[p]), a, v] for f, p, a, v in
             zip(d["features"], d["positions"], d["activation"], d["new_activation"])]
    top = [[i + 1, show_token(b["token"]), b["prob"], show_token(a["token"]), a["prob"]]
           for i, (b, a) in enumerate(zip(d["top_before"], d["top_after"]))]
    change = [[show_token(c["token"]), c["id"], c["before"], c["after"], c["after"] - c["before"]] for c in d["logit_change"]]
    down = [[x["layer"], x["feature"], x["pos"], x["before"], x["after"]] for x in d["downstream"]]
    return [
        ("edits", ["feature", "pos", "token", "activation", "new"], edits),
        (f"next token after {show_token(toks[-1])} (top {k})", ["#", "before", "p", "after", "p"], top),
        ("logits that moved most", ["token", "id", "before", "after", "change"], change),
        ("later features that changed most", ["layer", "feature", "pos", "before", "after"], down),
    ]


def markdown(d: dict) -> str:
    parts = [f"## Intervention at layer {d['layer']}", "",
             f"Mean next-token loss {d['loss_before']:.4f} -> {d['loss_after']:.4f} "
             f"({d['loss_after'] - d['loss_before']:+.4f})."]
    for title, cols, rows in _tables(d):
        parts += ["", f"**{title}**", "", md_table(cols, rows) if rows else "_none_"]
    return "\n".join(parts)


def pretty(d: dict) -> None:
    out.print(f"[bold]Intervention at layer {d['layer']}[/]  mean loss {d['loss_before']:.4f} -> "
              f"{d['loss_after']:.4f} ({d['loss_after'] - d['loss_before']:+.4f})")
    for title, cols, rows in _tables(d):
        if not rows:
            out.print(f"[dim]{escape(title)}: none[/]")
            continue
        t = Table(title=title, title_justify="left")
        for i, c in enumerate(cols):
            text = all(isinstance(row[i], str) for row in rows)
            t.add_column(c, justify="left" if text else "right")
        for row in rows:
            t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        out.print(t)
