"""`attnscope trace "PROMPT" --layer L --feature F [--pos T] [--depth D]`: the recursive DFA tree of one feature."""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from rich.tree import Tree

from sae.cli.common import (UsageError, add_feature_target, add_model_flags, add_output_flags, emit,
                            non_negative_int, out, positive_int)
from sae.cli.features import check_feature, open_model_and_saes, warn


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "trace",
        help="recursive DFA: a feature back through heads, source tokens and upstream components",
        description="Trace one feature's pre-activation at one position back through (head, source) pairs into "
        "the residual stream there (embeddings, earlier attention-SAE features, their error terms, MLP outputs, "
        "biases), with attention patterns and LayerNorm scales frozen, and recurse into earlier features. Every "
        "node is the sum of its children.",
    )
    add_feature_target(p, "token position (0 = BOS; negative counts from the end; default: where it fires most)")
    p.add_argument("--depth", type=non_negative_int, default=1, help="levels of upstream features to expand (default 1)")
    p.add_argument("--keep", type=positive_int, default=5, help="children kept per node; the rest are merged (default 5)")
    p.add_argument("--min-share", type=float, default=None,
                   help="tree and markdown: show terms of at least this share of the root's |value|, the rest summed "
                        "in one line (default 0.05, as the workbench's export; --json keeps every term)")
    p.add_argument("--all", action="store_true", help="show every term, down to the smallest (same as --min-share 0)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.trace import MIN_SHARE, prune_tree, trace_feature

    model, saes = open_model_and_saes(args, args.layer, prompt=args.prompt)
    check_feature(saes[args.layer], args.layer, args.feature)
    share = 0.0 if args.all else MIN_SHARE if args.min_share is None else args.min_share
    if not 0.0 <= share < 1.0:
        raise UsageError(f"--min-share must be in [0, 1), got {args.min_share}")
    tr = trace_feature(model, saes, args.prompt, args.layer, args.feature, args.pos, args.depth, args.keep)
    if tr.truncated:
        warn(f"the prompt is longer than the model's context; analysed its first {model.n_ctx} tokens")
    d = tr.to_dict()
    if share > 0 and not getattr(args, "json", False):
        d["root"] = prune_tree(d["root"], share * abs(d["root"]["value"]), share)
        d["approximation"] += f"; terms under {share:.0%} of the root summed (--all shows every term)"
    emit(args, d, markdown, pretty)
    return 0


def _line(n: dict) -> str:
    extra = f"  (act {n['act']:.3f})" if n.get("kind") == "feature" and "act" in n else ""
    return f"{n['value']:+.4f}  {n['label']}{extra}"


def markdown(d: dict) -> str:
    lines = [f"## Trace of layer {d['layer']} feature {d['feature']} at position {d['pos']} ({d['model']})", "",
             f"_{d['approximation']}_", ""]

    def walk(n: dict, depth: int) -> None:
        lines.append("  " * depth + f"- `{n['value']:+.4f}` {n['label']}" + (
            f" (act {n['act']:.3f})" if n.get("kind") == "feature" and "act" in n else ""))
        for c in n["children"]:
            walk(c, depth + 1)

    walk(d["root"], 0)
    return "\n".join(lines)


STYLE = {"feature": "bold cyan", "head": "magenta", "head_source": "yellow", "other": "dim", "unexplained": "bold red"}


def pretty(d: dict) -> None:
    def add(tree: Tree, n: dict) -> None:
        style = STYLE.get(n["kind"], "")
        label = escape(_line(n))
        node = tree.add(f"[{style}]{label}[/]" if style else label)
        for c in n["children"]:
            add(node, c)

    root = d["root"]
    tree = Tree(f"[bold]{escape(_line(root))}[/]  [dim]pre-activation of L{d['layer']} F{d['feature']}[/]")
    for c in root["children"]:
        add(tree, c)
    out.print(tree)
    out.print(f"[dim]{escape(d['approximation'])}[/]")
