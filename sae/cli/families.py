"""`attnscope families --layer L`: the paper's families (induction, short-range context, long-range context, other)
of a layer's live features, each mapped from the feature's automatic role (`attnscope roles`; the table is
`sae.analysis.families.FAMILY_OF_ROLE`), with counts and example contexts. Reads the layer's dashboards; loads the
model and SAE for the roles' induction test unless --no-confirm."""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from sae.cli.common import FitTable as Table
from rich.text import Text

from sae.cli.common import add_model_flags, add_output_flags, emit, out, positive_int
from sae.cli.features import context_piece, md_table, non_negative_int, show_token


def register(subparsers: Any) -> None:
    from sae.analysis.families import MAPPING_NOTE

    p = subparsers.add_parser(
        "families", help="the paper's families (induction / short-range / long-range context / other), mapped from "
        "the automatic roles",
        description="Show the paper's feature families of a layer's live features. A family is not classified on "
        "its own: it is mapped from the feature's automatic role (`attnscope roles`, needs `attnscope dashboards "
        f"build --layer L` first); {MAPPING_NOTE}. The mapping and the induction test are printed with the result.",
    )
    p.add_argument("--layer", type=non_negative_int, required=True)
    p.add_argument("--no-confirm", action="store_true",
                   help="skip the roles' repeated-random-token test (then no feature is induction)")
    p.add_argument("--examples", type=positive_int, default=3, help="example features per family (default 3)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.families import classify_layer
    from sae.analysis.roles import model_confirmer
    from sae.cli.dashboards import built_dirs
    from sae.cli.features import open_model_and_saes

    name, dirs = built_dirs(args, [args.layer])
    confirm = None
    if not args.no_confirm and args.layer >= 1:
        model, saes = open_model_and_saes(args, args.layer)
        confirm = model_confirmer(model, saes[args.layer], args.layer)
    rep = classify_layer(dirs[args.layer], n_examples=args.examples, confirm=confirm)
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
        rows.append([e["feature"], e["role"], e["act"], _ctx(e), src])
    return rows


def markdown(d: dict) -> str:
    lines = [f"## Paper families of {d['model']} layer {d['layer']} (mapped from the automatic roles)", "",
             "Each family is mapped from the feature's automatic role:", "",
             md_table(["automatic role", "paper family"], [[r, f] for r, f in d["mapping"].items()]), "",
             "Role rules (first match wins):", ""]
    lines += [f"{i + 1}. {r}" for i, r in enumerate(d["role_rules"])]
    lines += ["", md_table(["paper family", "from roles", "features", "share of live"],
                           [[f["family"], ", ".join(f["from_roles"]), f["count"], f"{f['fraction']:.0%}"]
                            for f in d["families"]]),
              "", f"{d['n_live']} live features. Induction test: {d['confirmation']}."]
    for f in d["families"]:
        if f["examples"]:
            lines += ["", f"### {f['family']}", "",
                      md_table(["feature", "automatic role", "top act", "top context", "top source"],
                               _example_rows(f))]
    return "\n".join(lines)


def pretty(d: dict) -> None:
    out.print(f"[bold]Paper families[/] · {escape(d['model'])} · layer {d['layer']} · {d['n_live']} live features")
    out.print("[dim]each family is mapped from the feature's automatic role: "
              + escape(", ".join(f"{r} -> {f}" for r, f in d["mapping"].items()))
              + "; role rules: `attnscope roles --layer L`[/]")
    out.print(f"[dim]induction test: {escape(d['confirmation'])}[/]")
    t = Table(header_style="bold")
    t.add_column("paper family (from roles)")
    t.add_column("features", justify="right")
    t.add_column("share", justify="right")
    t.add_column("examples (feature role: top context, top source)", overflow="fold")
    for f in d["families"]:
        ex = Text()
        for j, (fid, role, act, ctx, src) in enumerate(_example_rows(f)):
            if j:
                ex.append("\n")
            ex.append(f"F{fid} ", style="cyan")
            ex.append(f"{role}: ", style="italic")
            ex.append(ctx)
            ex.append(f"  ← {src}", style="dim")
        name = Text(f["family"])
        name.append(f"\n({', '.join(f['from_roles'])})", style="dim")
        t.add_row(name, str(f["count"]), f"{f['fraction']:.0%}", ex)
    out.print(t)
