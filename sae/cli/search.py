"""`attnscope search (--token T | --text S | --label S | --role R | --prompt P --pos N)`: find features from the
built dashboards (or, with --prompt, the strongest at one position over the whole SAE)."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import UsageError, add_model_flags, add_output_flags, emit, positive_int, tables_markdown
from sae.cli.features import non_negative_int, show_token


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search",
        help="find features by token, example text, human label, role, or at a position of a prompt",
        description="Search the built dashboards: --token ranks features by their mean activation on that token "
        "in the stored example windows; --text finds features whose top examples contain the text; --label "
        "searches human labels (family and note); --role matches families and automatic roles. --prompt with "
        "--pos lists the strongest features at that token over the whole SAE of each layer. Open a hit with "
        "`attnscope dashboard --layer L --feature F`.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--token", help="a token, e.g. ' the' (quotes keep the space; without it, ' the' and 'the' match)")
    g.add_argument("--text", help="a fragment of a top example's text (case-insensitive)")
    g.add_argument("--label", help="text of a human label's family or note")
    g.add_argument("--role", help="a family or automatic role (induction, previous-token, short-range, ...)")
    g.add_argument("--prompt", help="a prompt: the strongest features at --pos across the whole SAE")
    p.add_argument("--pos", type=int, default=-1, help="with --prompt: token position (0 = BOS; default: the last)")
    p.add_argument("--layer", type=non_negative_int, action="append", default=None,
                   help="only this layer (repeat for several; default: every layer with an SAE)")
    p.add_argument("--top", type=positive_int, default=20, help="hits listed (default 20)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis import search

    if args.prompt is not None:
        from sae.cli.features import open_model_and_saes

        model, saes = open_model_and_saes(args, prompt=args.prompt)
        for layer in args.layer or []:
            if layer not in saes:
                raise UsageError(f"no SAE for layer {layer}; the SAEs cover layers {sorted(saes)}")
        res = search.at_position(model, saes, args.prompt, args.pos, top=args.top, layers=args.layer)
    else:
        from sae.analysis.labels import LabelStore
        from sae.cli.dashboards import built_dirs

        _, dirs = built_dirs(args, sorted(set(args.layer)) if args.layer else None)
        if args.token is not None:
            res = search.by_token(dirs, args.token, args.top)
        elif args.text is not None:
            res = search.by_text(dirs, args.text, args.top)
        elif args.label is not None:
            res = search.by_label(dirs, LabelStore(), args.label, args.top)
        else:
            res = search.by_role(dirs, args.role, args.top)
    emit(args, res.to_dict(), markdown, pretty)
    return 0


def _tables(d: dict) -> tuple[str, list]:
    q = show_token(d["query"]) if d["by"] == "token" else d["query"]
    head = f"search by {d['by']}: {q}" + (f" (at {d['extra']['pos']} {show_token(d['extra']['token'])})"
                                           if d["by"] == "position" else "")
    rows = [[str(h["layer"]), str(h["feature"]), f"{h['score']:.4g}", h["why"]] for h in d["hits"]]
    title = f"{len(rows)} hit(s) · score: {d['note']}" if rows else "no hits"
    return head, [(title, ["layer", "feature", "score", "why"], rows)]


def markdown(d: dict) -> str:
    head, tables = _tables(d)
    return tables_markdown(f"## {head}", tables)


def pretty(d: dict) -> None:
    from rich.markup import escape
    from rich.text import Text

    from sae.cli.common import FitTable, out

    head, tables = _tables(d)
    out.print(f"[bold]{escape(head)}[/]")
    for title, cols, rows in tables:
        t = FitTable(title=title, title_justify="left")
        for c in cols:
            t.add_column(c, justify="right" if c in ("layer", "feature", "score") else "left")
        for row in rows:
            t.add_row(*[Text(x) for x in row])
        out.print(t)
