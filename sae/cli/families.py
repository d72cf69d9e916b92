"""`attnscope families --layer L`: every live feature classified as induction, short-range context, long-range
context or other, with the rules, counts and example contexts. Reads the layer's dashboards."""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from sae.cli.common import FitTable as Table
from rich.text import Text

from sae.cli.common import add_model_flags, add_output_flags, emit, out, positive_int
from sae.cli.features import context_piece, md_table, non_negative_int, show_token


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "families", help="classify each live feature: induction / short-range / long-range context / other",
        description="Classify every live feature of a layer from the DFA by source of its top examples (needs "
        "`attnscope dashboards build --layer L` first). The rules are printed with the result.",
    )
    p.add_argument("--layer", type=non_negative_int, required=True)
    p.add_argument("--examples", type=positive_int, default=3, help="example features per family (default 3)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.cli.dashboards import built_dirs
    from sae.analysis.families import classify_layer

    name, dirs = built_dirs(args, [args.layer])
    rep = classify_layer(dirs[args.layer], n_examples=args.examples)
    d = rep.to_dict()
    d["model"] = name
    emit(args, d, markdown, pretty)
    return 0


def _ctx(e: dict) -> str:
    toks = [context_piece(t) for t in e["tokens"]]
    if 0 <= e["center"] < len(toks):
        toks[e["center"]] = f"[{toks[e['center']]}]"
    return "".join(toks)


def _example_rows(fam: dict) -> list[list[Any]]:
    rows = []
    for e in fam["examples"]:
        src = f"{show_token(e['top_source_token'])} ({e['distance']} back)" if e["top_source_token"] is not None else "-"
        rows.append([e["feature"], e["act"], _ctx(e), src])
    return rows


def markdown(d: dict) -> str:
    lines = [f"## Feature families of {d['model']} layer {d['layer']}", "", "Rules (first match wins):", ""]
    lines += [f"{i + 1}. {r}" for i, r in enumerate(d["rules"])]
    lines += ["", md_table(["family", "features", "share of live"],
                           [[f["family"], f["count"], f"{f['fraction']:.0%}"] for f in d["families"]]),
              "", f"{d['n_live']} live features."]
    for f in d["families"]:
        if f["examples"]:
            lines += ["", f"### {f['family']}", "",
                      md_table(["feature", "top act", "top context", "top source"],
                               _example_rows(f))]
    return "\n".join(lines)


def pretty(d: dict) -> None:
    out.print(f"[bold]Feature families[/] · {escape(d['model'])} · layer {d['layer']} · {d['n_live']} live features")
    for i, r in enumerate(d["rules"]):
        out.print(f"[dim]{i + 1}. {escape(r)}[/]")
    t = Table(header_style="bold")
    t.add_column("family")
    t.add_column("features", justify="right")
    t.add_column("share", justify="right")
    t.add_column("examples (feature: top context, top source)", overflow="fold")
    for f in d["families"]:
        ex = Text()
        for j, (fid, act, ctx, src) in enumerate(_example_rows(f)):
            if j:
                ex.append("\n")
            ex.append(f"F{fid} ", style="cyan")
            ex.append(ctx)
            ex.append(f"  ← {src}", style="dim")
        t.add_row(f["family"], str(f["count"]), f"{f['fraction']:.0%}", ex)
    out.print(t)
