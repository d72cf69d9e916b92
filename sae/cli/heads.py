"""`attnscope heads [--layer L]`: each head's top features, their roles (human label or automatic role), and a
mono/polysemantic verdict."""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from rich.text import Text

from sae.cli.common import FitTable as Table

from sae.cli.common import UsageError, add_model_flags, add_output_flags, emit, out, positive_int
from sae.cli.features import md_table, non_negative_int

SHORT = {"induction": "ind", "short-range context": "short", "long-range context": "long", "other": "other",
         "previous-token": "prev", "duplicate-token": "dup"}


def short(role: str) -> str:
    return SHORT.get(role, role)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def register(subparsers: Any) -> None:
    from sae.analysis.heads import criterion_text

    p = subparsers.add_parser(
        "heads", help="head survey: top features per head, their roles, monosemantic or polysemantic",
        description="For every head: its top features by decoder-norm share and by DFA on the corpus, their "
        "roles (human labels where they exist, automatic roles otherwise), and a verdict; the fraction of "
        "polysemantic heads per layer and overall, saying whether it rests on human labels or automatic roles. "
        "Needs the layers' dashboards (`attnscope dashboards build`). Rule (default --top/--agree): "
        + criterion_text(10, 1.0),
    )
    p.add_argument("--layer", type=non_negative_int, default=None, help="one layer (default: every layer with an SAE)")
    p.add_argument("--top", type=positive_int, default=10, help="top features per head (default 10, as in the paper)")
    p.add_argument("--agree", type=_fraction, default=1.0,
                   help="share of the top features that must share a role for 'monosemantic' (default 1.0 = all)")
    p.add_argument("--labels", default=None, help="label file of `attnscope study` (default: $ATTNSCOPE_LABELS or "
                   "the user data dir)")
    p.add_argument("--no-confirm", action="store_true",
                   help="skip the repeated-random-token test of induction candidates (faster; then no automatic "
                   "role is induction)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.heads import survey_heads
    from sae.analysis.labels import LabelStore, human_labels_by_layer
    from sae.cli.dashboards import built_dirs
    from sae.cli.features import open_model_and_saes

    name, dirs = built_dirs(args, None if args.layer is None else [args.layer])
    if not dirs:
        raise UsageError("no SAEs were given")
    roles = {}
    if not args.no_confirm and any(layer >= 1 for layer in dirs):
        from sae.analysis.cache import layer_roles
        from sae.cli.common import job_progress

        model, saes = open_model_and_saes(args)
        # each layer's roles and their induction test come from the analysis cache after the first run
        with job_progress("induction test") as on_progress:
            roles = {layer: layer_roles(model, saes[layer], layer, dirs[layer], on_progress=on_progress)
                     for layer in dirs if layer in saes}
    labels = human_labels_by_layer(LabelStore(args.labels), dirs)
    survey = survey_heads(dirs, model=name, n_top=args.top, agree=args.agree, labels=labels, roles=roles)
    emit(args, survey.to_dict(), markdown, pretty)
    return 0


def _feats(fs: list[dict], key: str) -> str:
    return ", ".join(f"{f['id']}:{short(f['role'])}{'*' if f.get('source') == 'human' else ''}({f[key]:.0%})"
                     for f in fs)


def markdown(d: dict) -> str:
    lines = [f"## Head survey of {d['model']}", "", f"**Criterion:** {d['criterion']}", "",
             f"_{d['dfa_note']} Roles are automatic roles; a `*` marks a human label (labels.json) instead._", "", "Automatic role rules (first match wins):", ""]
    lines += [f"- {r}" for r in d["role_rules"]]
    for lh in d["layers"]:
        lines += ["", f"### Layer {lh['layer']}: {lh['polysemantic_fraction']:.0%} polysemantic (from "
                  f"{lh.get('source', 'automatic roles')})", ""]
        lines.append(md_table(
            ["head", "verdict", "roles (top by decoder share)", "from", "top by decoder share", "top by DFA"],
            [[f"L{h['layer']}H{h['head']}", h["verdict"], ", ".join(f"{k} {v}" for k, v in h["roles"].items()),
              h.get("source", "automatic"), _feats(h["top_by_decoder"], "decoder_share"),
              _feats(h["top_by_dfa"], "dfa_share")] for h in lh["heads"]]))
    lines += ["", f"**Overall: {d['polysemantic_fraction']:.0%} of heads polysemantic.**"]
    return "\n".join(lines)


def pretty(d: dict) -> None:
    out.print(f"[bold]Head survey[/] · {escape(d['model'])}")
    out.print(f"[dim]criterion: {escape(d['criterion'])}[/]")
    for lh in d["layers"]:
        t = Table(title=f"layer {lh['layer']} · {lh['polysemantic_fraction']:.0%} polysemantic · from "
                  f"{lh.get('source', 'automatic roles')}", header_style="bold")
        t.add_column("head")
        t.add_column("verdict")
        t.add_column("roles")
        t.add_column("from")
        t.add_column("top by decoder share (id:role(share))", overflow="fold")
        t.add_column("top by DFA", overflow="fold")
        for h in lh["heads"]:
            v = Text("mono", style="green") if h["verdict"] == "monosemantic" else Text("poly", style="yellow")
            t.add_row(f"L{h['layer']}H{h['head']}", v, ", ".join(f"{short(k)} {n}" for k, n in h["roles"].items()),
                      h.get("source", "automatic"), _feats(h["top_by_decoder"], "decoder_share"), _feats(h["top_by_dfa"], "dfa_share"))
        out.print(t)
    out.print(f"[bold]overall: {d['polysemantic_fraction']:.0%} of heads polysemantic[/]")
    out.print(f"[dim]{escape(d['dfa_note'])} Roles are automatic roles; a * marks a human label (labels.json) instead. Role rules: `attnscope roles --layer L`.[/]")
