"""`attnscope study ...`: the paper's random-feature labelling study from the command line.

`study sample` says what to label (N random live features of a layer, seeded), `study label` stores one label,
`study families` lists or extends the families, `study report` prints per layer the share of each family and of
interpretable features as a table and a stacked bar chart (and, where dashboards are built, how each automatic
role rule agrees with the human labels). The workbench's study screen writes the same label file.
"""

from __future__ import annotations

import argparse
from typing import Any

from sae.engine.safe_text import markup_escape as escape, term_line
from sae.cli.common import FitTable as Table
from rich.text import Text

from sae.cli.common import (
    UsageError,
    add_model_flags,
    add_output_flags,
    emit,
    out,
    positive_int,
)
from sae.cli.features import context_piece, md_table, non_negative_int
from sae.engine.names import density_text

# one colour per family in the terminal chart (cycled); the markdown chart uses labels.BAR_GLYPHS
COLOURS = ["magenta", "cyan", "green", "yellow", "blue", "bright_black", "red", "bright_green", "bright_cyan",
           "bright_magenta", "white", "bright_yellow"]


def _labels_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", default=None,
                   help="label file (default: $ATTNSCOPE_LABELS, else labels.json in the user data directory)")


def register(subparsers: Any) -> None:
    from sae.analysis.labels import RATINGS

    g = subparsers.add_parser(
        "study", help="the random-feature labelling study: sample, label, report",
        description="Label N random live features per layer by hand (the paper's study), then report per layer "
        "the share of each family and of interpretable features. Labels are shared with the workbench's study "
        "screen (S) and safe to write from several processes at once.",
    )
    sub = g.add_subparsers(dest="study_command", metavar="ACTION")
    g.set_defaults(func=lambda args: _help(g))

    s = sub.add_parser("sample", help="N random live features of a layer to label (seeded)",
                       description="The features a study of this layer labels: N random live features, drawn with "
                       "the seed (the same on every machine), with their top context and current label.")
    s.add_argument("--layer", type=non_negative_int, required=True)
    s.add_argument("--n", type=positive_int, default=30, help="features to draw (default 30, as in the paper)")
    s.add_argument("--seed", type=int, default=0)
    _labels_flag(s)
    add_model_flags(s)
    add_output_flags(s)
    s.set_defaults(func=run_sample)

    lab = sub.add_parser("label", help="store one feature's label",
                         description="Store (or replace) the label of one feature: its family, an interpretability "
                         f"rating ({', '.join(f'{k}={v}' for k, v in RATINGS.items())}) and a note.")
    lab.add_argument("--layer", type=non_negative_int, required=True)
    lab.add_argument("--feature", type=non_negative_int, required=True)
    lab.add_argument("--family", required=True, help="one of `attnscope study families`")
    lab.add_argument("--rating", default=None, help="yes / maybe / no (or 2 / 1 / 0)")
    lab.add_argument("--note", default="")
    lab.add_argument("--author", default=None, help="default: $ATTNSCOPE_AUTHOR or $USER")
    _labels_flag(lab)
    add_model_flags(lab)
    add_output_flags(lab)
    lab.set_defaults(func=run_label)

    f = sub.add_parser("families", help="list the families labels may use, or add one",
                       description="The families and roles a label may use: the paper's, plus any added here.")
    f.add_argument("--add", default=None, metavar="NAME", help="add a family or role")
    _labels_flag(f)
    f.set_defaults(func=run_families)

    r = sub.add_parser(
        "report", help="per layer: share of each family and of interpretable features, table and bar chart",
        description="Per layer, from the stored labels: the share of each family and the share of rated features "
        "rated interpretable (yes), as a table and a stacked bar chart (--md: markdown table and a text figure; "
        "--json). Where the layer's dashboards are built for --model/--saes, also each automatic role rule's "
        "agreement with the human labels (precision and recall per role).",
    )
    r.add_argument("--no-agreement", action="store_true", help="skip the automatic roles' agreement")
    r.add_argument("--no-confirm", action="store_true",
                   help="agreement without the repeated-random-token test (then no automatic role is induction)")
    _labels_flag(r)
    add_model_flags(r)
    add_output_flags(r)
    r.set_defaults(func=run_report)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _store(args: argparse.Namespace):
    from sae.analysis.labels import LabelStore

    return LabelStore(args.labels)


def _rating(text: str | None) -> int | None:
    from sae.analysis.labels import RATINGS

    if text is None:
        return None
    by_name = {v: k for k, v in RATINGS.items()}
    t = text.strip().lower()
    if t in by_name:
        return by_name[t]
    if t.isdigit() and int(t) in RATINGS:
        return int(t)
    raise UsageError(f"--rating must be one of {', '.join(f'{v} ({k})' for k, v in RATINGS.items())}; got {text!r}")


def _layer_dir(args: argparse.Namespace, layer: int):
    from sae.cli.dashboards import built_dirs

    name, dirs = built_dirs(args, [layer])
    return name, dirs[layer]


# ---- sample -------------------------------------------------------------------------------------------------


def run_sample(args: argparse.Namespace) -> int:
    from sae.analysis.dashboards import feature_stats
    from sae.analysis.labels import (
        RATINGS,
        sae_id_of,
        sample_features,
        study_id,
    )

    name, d = _layer_dir(args, args.layer)
    sae, _ = sae_id_of(d)
    stats = feature_stats(d)
    live = (stats["n_fire"] > 0).nonzero().flatten().tolist()
    ids = sample_features(live, args.n, args.seed, args.layer)
    store = _store(args)
    have = {lab.feature: lab for lab in store.labels(sae=sae, layer=args.layer)}
    vocab, C = stats["index"]["vocab"], stats["index"]["spec"]["context"]
    rows = []
    for i in ids:
        tok = stats["top_tok"][i, 0]
        ctx = "".join(("[" + context_piece(vocab.get(str(int(t)), "?")) + "]") if j == C else context_piece(vocab.get(str(int(t)), "?"))
                      for j, t in enumerate(tok.tolist()) if t >= 0)
        lab = have.get(i)
        rows.append({"feature": i, "density": float(stats["density"][i]), "top_context": ctx,
                     "family": lab.family if lab else None,
                     "rating": RATINGS.get(lab.rating) if lab and lab.rating is not None else None})
    data = {"model": name, "sae": sae, "layer": args.layer, "n": args.n, "seed": args.seed, "n_live": len(live),
            "study": study_id(sae, args.layer, args.n, args.seed), "labels": str(store.path),
            "n_labelled": sum(r["family"] is not None for r in rows), "features": rows}
    emit(args, data, _sample_md, _sample_pretty)
    return 0


def _sample_head(d: dict) -> str:
    return (f"{d['model']} layer {d['layer']}: {len(d['features'])} of {d['n_live']} live features (seed {d['seed']}); "
            f"{d['n_labelled']} labelled in {d['labels']}")


def _sample_md(d: dict) -> str:
    return "\n".join([f"## Study sample: {_sample_head(d)}", "", md_table(
        ["feature", "density", "top context", "family", "rating"],
        [[r["feature"], density_text(r["density"]), r["top_context"], r["family"] or "-", r["rating"] or "-"]
         for r in d["features"]])])


def _sample_pretty(d: dict) -> None:
    out.print(f"[bold]Study sample[/] · {escape(_sample_head(d))}")
    t = Table(header_style="bold")
    for c in ("feature", "density", "top context", "family", "rating"):
        t.add_column(c, overflow="fold")
    for r in d["features"]:
        t.add_row(str(r["feature"]), density_text(r["density"]), r["top_context"], r["family"] or "-", r["rating"] or "-")
    out.print(t)
    out.print("[dim]label one: attnscope study label --layer L --feature F --family NAME --rating yes|maybe|no "
              "--note TEXT · or press 8 (the study screen) in the workbench[/]")


# ---- label / families -------------------------------------------------------------------------------------


def run_label(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sae.analysis.dashboards import dashboard_summary
    from sae.analysis.labels import sae_id_of

    rating = _rating(args.rating)
    name, d = _layer_dir(args, args.layer)
    sae, model = sae_id_of(d)
    d_sae = int(dashboard_summary(d).get("d_sae", 0))
    if d_sae and args.feature >= d_sae:
        raise UsageError(f"feature {args.feature} is outside the layer-{args.layer} SAE (ids 0..{d_sae - 1})")
    lab = _store(args).put(sae, args.layer, args.feature, args.family, rating, args.note, args.author, model or name)
    emit(args, asdict(lab), lambda x: f"labelled layer {x['layer']} feature {x['feature']}: {x['family']}"
         + (f", rating {x['rating']}" if x["rating"] is not None else "") + (f" — {x['note']}" if x["note"] else ""))
    return 0


def run_families(args: argparse.Namespace) -> int:
    store = _store(args)
    fams = store.add_family(args.add) if args.add else store.families()
    for i, f in enumerate(fams):
        print(f"{(i + 1) % 10 if i < 10 else ' '}  {term_line(f)}")
    return 0


# ---- report -----------------------------------------------------------------------------------------------


def run_report(args: argparse.Namespace) -> int:
    from sae.analysis.labels import add_agreement, study_report

    rep = study_report(_store(args))
    if not rep.layers:
        raise UsageError(f"no labels yet in {_store(args).path}; start with `attnscope study sample --layer 0`")
    if not args.no_agreement:
        _agreement(args, rep, add_agreement)
    emit(args, rep.to_dict(), report_markdown, report_pretty)
    return 0


def report_markdown(d: dict) -> str:
    from sae.analysis.labels import report_markdown as md

    return md(d)


def _agreement(args: argparse.Namespace, rep: Any, add_agreement: Any) -> None:
    """Agreement for the layers whose dashboards for --model/--saes are built; a note (never an error) otherwise."""
    from sae.cli.dashboards import built_dirs

    layers = sorted({ls.layer for ls in rep.layers})
    dirs = {}
    for layer in layers:
        try:
            dirs[layer] = built_dirs(args, [layer])[1][layer]
        except UsageError as exc:
            rep.notes.append(f"layer {layer}: no agreement ({exc})")
    confirm = {}
    if dirs and not args.no_confirm and any(layer >= 1 for layer in dirs):
        from sae.analysis.roles import model_confirmer
        from sae.cli.features import open_model_and_saes

        model, saes = open_model_and_saes(args)
        confirm = {layer: model_confirmer(model, saes[layer], layer) for layer in dirs if layer in saes and layer >= 1}
    add_agreement(rep, dirs, confirm)


def report_pretty(d: dict) -> None:
    from sae.analysis.labels import RATING_NOTE, report_tables

    used, cols, rows = report_tables(d)
    t = Table(title="feature families by layer (human labels)", title_justify="left", header_style="bold")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    out.print(t)
    out.print(f"[dim]{RATING_NOTE}[/]")
    width = 50
    out.print("[bold]share of each family per layer[/]")
    for ls, row in zip(d["layers"], rows):
        line = Text(f"{row[0]:<6} ")
        line.append_text(bar_text({f: ls["shares"].get(f, 0.0) for f in used}, width))
        line.append(f"  n={ls['n']}")
        out.print(line)
    legend = Text("        ")
    for i, f in enumerate(used):
        legend.append("██", style=COLOURS[i % len(COLOURS)])
        legend.append(f" {f}  ")
    out.print(legend)
    if d["agreement"]:
        print_agreement(d)
        for k, ag in sorted(d["agreement"].items()):
            out.print(f"[dim]layer {k}: induction test: {escape(ag['induction_test'])}[/]")
    for n in d["notes"]:
        out.print(f"[yellow]{escape(n)}[/]")


def print_agreement(d: dict) -> None:
    """Each automatic rule against the human labels (`d["agreement"]`), as a rich table."""
    from sae.analysis.labels import AGREE_COLS, agreement_rows

    a = Table(title="automatic roles against the human labels (precision = both/auto, recall = both/human)",
              title_justify="left", header_style="bold")
    for c in AGREE_COLS:
        a.add_column(c)
    for row in agreement_rows(d):
        a.add_row(*row)
    out.print(a)


def bar_text(shares: dict[str, float], width: int) -> Text:
    """The stacked bar as coloured blocks (same run lengths as `labels.stacked_bar`)."""
    from sae.analysis.labels import stacked_bar

    glyph_line = stacked_bar(shares, width, glyphs="0123456789abcdefghij")
    t = Text()
    for ch in glyph_line:
        if ch == "·":
            t.append(ch, style="dim")
        else:
            t.append("█", style=COLOURS[int(ch, 36) % len(COLOURS)])
    return t
