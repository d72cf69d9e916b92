"""`attnscope roles --layer L`: each live feature's automatic role (previous-token, duplicate-token, induction,
short/long-range context, other), with the rules and their thresholds, and the repeated-random-token test of every
induction candidate. Reads the layer's dashboards; loads the model and SAE for the test."""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from sae.cli.common import FitTable as Table

from sae.cli.common import add_model_flags, add_output_flags, emit, out
from sae.cli.features import md_table, non_negative_int


def register(subparsers: Any) -> None:
    from sae.analysis.roles import RULES

    p = subparsers.add_parser(
        "roles", help="automatic roles of a layer's features: previous-token, duplicate-token, induction, context",
        description="Give every live feature of a layer an automatic role from the DFA by source of its top "
        "examples (needs `attnscope dashboards build --layer L`). Rules, first match wins: "
        + " | ".join(f"{i + 1}. {r}" for i, r in enumerate(RULES)),
    )
    p.add_argument("--layer", type=non_negative_int, required=True)
    p.add_argument("--no-confirm", action="store_true",
                   help="skip the repeated-random-token test (then no feature is called induction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the repeated random tokens (default 0)")
    p.add_argument("--labels", default=None, help="label file of `attnscope study`, for the rules' agreement with "
                   "the human labels (default: $ATTNSCOPE_LABELS or the user data dir)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def compute(args: argparse.Namespace, layer: int):
    """The layer's `RoleReport` and its built dashboard directory."""
    from sae.analysis.roles import roles_layer
    from sae.cli.dashboards import built_dirs
    from sae.cli.features import open_model_and_saes

    name, dirs = built_dirs(args, [layer])
    if not getattr(args, "no_confirm", False) and layer >= 1:
        from sae.analysis.cache import layer_roles
        from sae.cli.common import job_progress

        model, saes = open_model_and_saes(args, layer)
        with job_progress("induction test") as on_progress:  # from the analysis cache after the first run
            rep = layer_roles(model, saes[layer], layer, dirs[layer], seed=getattr(args, "seed", 0),
                              on_progress=on_progress)
    else:
        rep = roles_layer(dirs[layer], confirm=None)
    rep.model = name
    return rep, dirs[layer]


def run(args: argparse.Namespace) -> int:
    from sae.analysis.labels import LabelStore, human_labels_by_layer
    from sae.analysis.roles import agreement

    from sae.analysis.families import FAMILY_OF_ROLE

    rep, directory = compute(args, args.layer)
    d = rep.to_dict()
    for r in d["roles"]:
        r["paper_family"] = FAMILY_OF_ROLE[r["role"]]  # the paper's family, mapped from the role
    human = human_labels_by_layer(LabelStore(args.labels), {args.layer: directory})[args.layer]
    if human:  # each rule against the people who labelled this layer's features
        d["agreement"] = {str(args.layer): {**agreement(rep.role_of(), human), "induction_test": rep.confirmation}}
    emit(args, d, markdown, pretty)
    return 0


def _cand_rows(d: dict) -> list[list[Any]]:
    rows = []
    for c in d["candidates"]:
        k = c["confirmation"]
        if k is None:
            rows.append([c["feature"], c["role"], f"{c['scores']['induction']:.0%}", "-", "-", "-", "-", "not run"])
        else:
            rows.append([c["feature"], c["role"], f"{c['scores']['induction']:.0%}", " → ".join(map(repr, k["pair"])),
                         f"{k['act_first']:.2f}", f"{k['act_repeat']:.2f}", f"{k['top_source_hits']:.0%}",
                         "yes" if k["confirmed"] else "no"])
    return rows


CAND_COLS = ["feature", "role", "ind. examples", "pair (current → source)", "act first", "act repeat",
             "top src hits", "confirmed"]


def markdown(d: dict) -> str:
    lines = [f"## Automatic roles of {d['model']} layer {d['layer']}", "", "Rules (first match wins):", ""]
    lines += [f"{i + 1}. {r}" for i, r in enumerate(d["rules"])]
    lines += ["", md_table(["role", "paper family (mapped)", "features", "share of live"],
                           [[r["role"], r["paper_family"], r["count"], f"{r['fraction']:.0%}"] for r in d["roles"]]),
              "", f"{d['n_live']} live features. Induction test: {d['confirmation']}."]
    if d.get("agreement"):
        from sae.analysis.labels import AGREE_COLS, agreement_rows

        lines += ["", "### Agreement with the human labels", "", "precision = both / auto, recall = both / human", "",
                  md_table(AGREE_COLS, agreement_rows(d))]
    if d["candidates"]:
        lines += ["", "### Induction candidates", "", md_table(CAND_COLS, _cand_rows(d))]
    return "\n".join(lines)


def pretty(d: dict) -> None:
    out.print(f"[bold]Automatic roles[/] · {escape(d['model'])} · layer {d['layer']} · {d['n_live']} live features")
    for i, r in enumerate(d["rules"]):
        out.print(f"[dim]{i + 1}. {escape(r)}[/]")
    t = Table(header_style="bold")
    t.add_column("role")
    t.add_column("paper family (mapped)")
    t.add_column("features", justify="right")
    t.add_column("share", justify="right")
    t.add_column("first ids", overflow="fold")
    for r in d["roles"]:
        t.add_row(r["role"], r["paper_family"], str(r["count"]), f"{r['fraction']:.0%}", ", ".join(map(str, r["features"][:12])))
    out.print(t)
    out.print(f"induction test: {escape(d['confirmation'])}")
    if d.get("agreement"):
        from sae.cli.study import print_agreement

        print_agreement(d)
    if d["candidates"]:
        c = Table(title="induction candidates", title_justify="left", header_style="bold")
        for col in CAND_COLS:
            c.add_column(col)
        for row in _cand_rows(d)[:30]:
            c.add_row(*[str(x) for x in row])
        out.print(c)
