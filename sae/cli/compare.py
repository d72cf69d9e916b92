"""`attnscope compare "PROMPT A" "PROMPT B" --layer L`: the same features' peak activations on two prompts (clean vs
corrupted) side by side, and their difference."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import UsageError, add_model_flags, add_output_flags, emit, print_tables, positive_int, tables_markdown
from sae.cli.features import non_negative_int, open_model_and_saes


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare", help="the same features on two prompts (clean vs corrupted): peak activations and difference",
        description="Run both prompts, take each feature's peak activation over each prompt's tokens, keep the "
        "--top features strongest on either, and list them by the size of their difference (B - A).",
    )
    p.add_argument("prompt_a", help="the first prompt (e.g. the clean one)")
    p.add_argument("prompt_b", help="the second prompt (e.g. the corrupted one)")
    p.add_argument("--layer", type=non_negative_int, required=True, help="layer of the SAE")
    p.add_argument("--top", type=positive_int, default=16, help="features listed (default 16)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.intervene import compare_prompts

    if not args.prompt_a.strip() or not args.prompt_b.strip():
        raise UsageError("both prompts must have text")
    model, saes = open_model_and_saes(args, args.layer)
    c = compare_prompts(model, saes[args.layer], args.prompt_a, args.prompt_b, top=args.top)
    emit(args, {"prompt_a": args.prompt_a, "prompt_b": args.prompt_b, **c.to_dict()}, markdown, pretty)
    return 0


def _table(d: dict) -> list:
    rows = [[str(f), f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"] for f, a, b in zip(d["features"], d["a"], d["b"])]
    return [("peak activation per prompt", ["feature", "A", "B", "B - A"], rows)]


def markdown(d: dict) -> str:
    return tables_markdown(f"## Layer {d['layer']}: A = {d['prompt_a']!r}, B = {d['prompt_b']!r}", _table(d))


def pretty(d: dict) -> None:
    from rich.markup import escape

    print_tables(escape(f"layer {d['layer']}: A = {d['prompt_a']!r}, B = {d['prompt_b']!r}"), _table(d))
