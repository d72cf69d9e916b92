"""`attnscope dashboards build --layer L [--tokens N]` and `attnscope dashboard --layer L --feature F`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae.engine.safe_text import markup_escape as escape
from rich.panel import Panel
from sae.cli.common import FitTable as Table
from rich.text import Text

from sae.cli.common import UsageError, add_model_flags, job_progress, add_output_flags, console, emit, out, positive_int
from sae.engine.names import density_text
from sae.cli.features import (
    check_layer,
    context_piece,
    md_table,
    non_negative_int,
    open_model_and_saes,
    show_token,
)


def register(subparsers: Any) -> None:
    g = subparsers.add_parser("dashboards", help="build feature dashboards (dashboards build)",
                              description="Feature dashboards: scan held-out text once per layer and store, per "
                              "feature, top contexts, quantile samples, histogram, density, logit effects, head "
                              "shares and DFA by source of the top examples.")
    sub = g.add_subparsers(dest="dashboards_command", metavar="ACTION")
    g.set_defaults(func=lambda args: _help(g))
    b = sub.add_parser("build", help="scan held-out text and store every feature's dashboard (resumable)",
                       description="Scan held-out text once and store every feature's dashboard under the user "
                       "cache, keyed by model and SAE hash. Interrupted builds resume; finished ones are reused.")
    b.add_argument("--layer", type=non_negative_int, default=None, help="layer to build (default: every layer with an SAE)")
    b.add_argument("--tokens", type=positive_int, default=1_000_000,
                   help="held-out tokens to scan (default 1,000,000, or all the held-out text if shorter)")
    b.add_argument("--context", type=non_negative_int, default=8, help="tokens shown either side of an example (default 8)")
    b.add_argument("--top", type=positive_int, default=20, help="top examples kept per feature (default 20)")
    b.add_argument("--corpus", default="default", help="'default' (the embedded held-out split) or a file / directory")
    b.add_argument("--batch-rows", type=positive_int, default=32, help="rows per model pass (default 32)")
    b.add_argument("--force", action="store_true", help="rebuild even if built or partly built")
    add_model_flags(b)
    add_output_flags(b)
    b.set_defaults(func=run_build)

    d = subparsers.add_parser("dashboard", help="show one feature's dashboard",
                              description="Show one feature's dashboard (build them first with `attnscope "
                              "dashboards build --layer L`).")
    d.add_argument("--layer", type=non_negative_int, required=True)
    d.add_argument("--feature", type=non_negative_int, required=True)
    add_model_flags(d)
    add_output_flags(d)
    d.set_defaults(func=run_show)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _keys(args: argparse.Namespace) -> tuple[str, str]:
    from sae import zoo
    from sae.analysis.dashboards import source_key

    return source_key(zoo.resolve_model(args.model)), source_key(zoo.resolve_saes(args.saes))


# ---- build --------------------------------------------------------------------------------------------


def run_build(args: argparse.Namespace) -> int:
    from sae.analysis.dashboards import DashboardSpec, build_layers, register_built
    from sae.zoo import corpus_texts

    model, saes = open_model_and_saes(args)
    if args.layer is not None:
        check_layer(model, saes, args.layer)
    layers = [args.layer] if args.layer is not None else sorted(saes)
    if not layers:
        raise UsageError("no SAEs were given")
    model_key, sae_key = _keys(args)
    ctx = min([model.n_ctx] + [saes[layer].cfg.context_size or model.n_ctx for layer in layers])
    spec = DashboardSpec(n_tokens=args.tokens, context=args.context, n_top=args.top, corpus=args.corpus,
                         context_size=ctx)
    what = f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"
    try:
        with job_progress(f"{what} dashboards", transient=False) as on_progress:
            built = build_layers(model, {layer: saes[layer] for layer in layers}, spec, on_progress=on_progress,
                                 batch_rows=args.batch_rows, force=args.force,
                                 docs=lambda: corpus_texts(args.corpus, "heldout"))
    except KeyboardInterrupt:
        console.print("[yellow]stopped; the scan so far is saved; run the same command to resume[/]")
        raise
    results = []
    for layer in layers:
        res = built[layer]
        if res.status in ("built", "cached"):
            register_built(model_key, sae_key, layer, res.directory)
        results.append(res.to_dict() | {"layer": layer})
    emit(args, {"model": model.name, "builds": results}, _build_md, _build_pretty)
    return 0


def _build_rows(d: dict) -> list[list[Any]]:
    return [[r["layer"], r["status"], f"{r['n_tokens']:,}", f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-",
             f"{r['total_seconds']:.1f}", r["directory"]] for r in d["builds"]]


BUILD_HEADERS = ["layer", "status", "tokens", "scan tokens/s", "seconds", "directory"]


def _build_md(d: dict) -> str:
    return f"## Dashboards for {d['model']}\n\n" + md_table(BUILD_HEADERS, _build_rows(d))


def _build_pretty(d: dict) -> None:
    t = Table(title=f"dashboards · {d['model']}", header_style="bold")
    for h in BUILD_HEADERS:
        t.add_column(h, overflow="fold")
    for r in _build_rows(d):
        t.add_row(*(str(x) for x in r))
    out.print(t)
    out.print("[dim]open one with: attnscope dashboard --layer L --feature F[/]")


# ---- show ---------------------------------------------------------------------------------------------


def _flags(args: argparse.Namespace) -> str:
    """The --model/--saes flags to repeat in a suggested command (none for the defaults)."""
    parts = []
    if args.model != "default":
        parts.append(f" --model {args.model}")
    if args.saes != "default":
        parts.append(f" --saes {args.saes}")
    return "".join(parts)


def find_dashboard_dir(args: argparse.Namespace) -> Path:
    """The built directory for (--model, --saes, --layer): from the registry when possible (no model load),
    else by loading the model and SAEs and hashing them."""
    from sae.analysis.dashboards import build_command, is_built, lookup_built

    model_key, sae_key = _keys(args)
    found = lookup_built(model_key, sae_key, args.layer)
    if found is not None:
        return found
    from sae.analysis.dashboards import dashboard_dir  # needs the model: hashes its weights

    model, saes = open_model_and_saes(args, args.layer)
    d = dashboard_dir(model, saes[args.layer], args.layer)
    if not is_built(d):
        raise UsageError(f"dashboards for layer {args.layer} are not built yet; run "
                         f"`{build_command(args.layer)}{_flags(args)}`")
    return d


def built_dirs(args: argparse.Namespace, layers: list[int] | None) -> tuple[str, dict[int, Path]]:
    """(model name, {layer: built dashboard dir}) for `layers` (None: every layer with an SAE). Uses the registry
    when it knows every layer; else loads the model and SAEs. Missing builds are a UsageError naming the command."""
    from sae.analysis.dashboards import build_command, dashboard_summary, is_built, lookup_built

    model_key, sae_key = _keys(args)
    if layers is not None:
        found = {layer: lookup_built(model_key, sae_key, layer) for layer in layers}
        if all(found.values()):
            name = dashboard_summary(next(iter(found.values())))["model"]
            return name, {k: v for k, v in found.items() if v is not None}
    from sae.analysis.dashboards import dashboard_dir

    model, saes = open_model_and_saes(args)
    if layers is None:
        layers = sorted(saes)
    for layer in layers:
        check_layer(model, saes, layer)
    dirs = {layer: dashboard_dir(model, saes[layer], layer) for layer in layers}
    missing = [layer for layer, d in dirs.items() if not is_built(d)]
    if missing:
        flags = _flags(args)
        if len(missing) == 1:
            raise UsageError(f"dashboards for layer {missing[0]} are not built yet; run `{build_command(missing[0])}{flags}`")
        raise UsageError(f"dashboards for layers {', '.join(map(str, missing))} are not built yet; run "
                         f"`attnscope dashboards build{flags}`")
    return model.name, dirs


def run_show(args: argparse.Namespace) -> int:
    from sae.analysis.dashboards import read_dashboard

    d = find_dashboard_dir(args)
    board = read_dashboard(d, args.feature)
    emit(args, board.to_dict(), markdown, pretty)
    return 0


def _context_md(e: dict) -> str:
    toks = [context_piece(t) for t in e["tokens"]]
    if 0 <= e["center"] < len(toks):
        toks[e["center"]] = f"**[{toks[e['center']]}]**"
    return "".join(toks)  # md_table escapes pipes


def _hist_line(h: dict, width: int = 40) -> str:
    counts = h["counts"]
    if not counts:
        return "(never fires)"
    bars = " ▁▂▃▄▅▆▇█"
    m = max(counts)
    step = max(1, len(counts) // width + (len(counts) % width > 0))
    merged = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
    m = max(merged)
    line = "".join(bars[min(8, round(8 * c / m))] if c else " " for c in merged)
    lo, hi = h["log10_edges"][0], h["log10_edges"][-1]
    return f"{10 ** lo:.3g} {line} {10 ** hi:.3g}"


def markdown(b: dict) -> str:
    lines = [f"## Layer {b['layer']} feature {b['feature']} ({b['model']})", "",
             f"density {density_text(b['density'])} over {b['n_tokens']:,} tokens · mean act when firing {b['mean_act']:.3g} · "
             f"max act {b['max_act']:.3g}", "",
             "**head shares of the decoder norm:** " + ", ".join(f"{b['layer']}.{i} {s:.0%}" for i, s in enumerate(b["head_shares"])),
             "", f"**activation histogram (log scale):** `{_hist_line(b['histogram'])}`", "", "### Top examples", ""]
    lines.append(md_table(["act", "context"], [[e["act"], _context_md(e)] for e in b["top"]]))
    lines += ["", "### Quantile samples", ""]
    rows = []
    for q in reversed(b["quantiles"]):
        for e in q["examples"]:
            rows.append([f"{q['lo']:.3g}-{q['hi']:.3g} ({q['share']:.0%})", e["act"], _context_md(e)])
    lines.append(md_table(["bin", "act", "context"], rows))
    lines += ["", "### Logit effects", "", md_table(
        ["top token", "effect", "bottom token", "effect"],
        [[show_token(t["token"]), t["value"], show_token(u["token"]), u["value"]]
         for t, u in zip(b["logits_top"], b["logits_bottom"])]), "", f"_{b['logit_note']}_"]
    if b["dfa"]:
        lines += ["", "### DFA by source of the top examples", ""]
        for x in b["dfa"]:
            srcs = ", ".join(f"{show_token(t)} {v:+.3g}" for t, v in zip(x["src_tokens"], x["dfa_src"]))
            lines.append(f"- example {x['example']}: pre-act {x['pre_act']:.3g} = sources [{srcs}] + earlier "
                         f"{x['dfa_earlier']:+.3g} + bias {x['dfa_bias']:+.3g}; heads "
                         + ", ".join(f"{b['layer']}.{i} {v:+.3g}" for i, v in enumerate(x["dfa_heads"])))
    return "\n".join(lines)


def _context_text(e: dict, max_act: float) -> Text:
    t = Text()
    for i, (tok, a) in enumerate(zip(e["tokens"], e["acts"])):
        s = context_piece(tok)
        if i == e["center"]:
            t.append(s, style="bold black on bright_green")
        elif a > 0 and max_act > 0:
            level = min(1.0, a / max_act)
            t.append(s, style="on green" if level > 0.5 else "on dark_green")
        else:
            t.append(s)
    return t


def pretty(b: dict) -> None:
    head = Text.assemble(
        (f"L{b['layer']} F{b['feature']}", "bold cyan"), f"  {b['model']}\n",
        f"density {density_text(b['density'])} over {b['n_tokens']:,} tokens · mean act {b['mean_act']:.3g} · max {b['max_act']:.3g}\n",
        "heads: ", ", ".join(f"{b['layer']}.{i} {s:.0%}" for i, s in enumerate(b["head_shares"])), "\n",
        f"histogram: {_hist_line(b['histogram'])}",
    )
    out.print(Panel(head, title="feature", expand=False))
    t = Table(title="top examples", header_style="bold", show_lines=False)
    t.add_column("act", justify="right")
    t.add_column("context", overflow="fold")
    for e in b["top"]:
        t.add_row(f"{e['act']:.3f}", _context_text(e, b["max_act"]))
    out.print(t)
    q = Table(title="quantile samples", header_style="bold")
    q.add_column("bin")
    q.add_column("act", justify="right")
    q.add_column("context", overflow="fold")
    for qb in reversed(b["quantiles"]):
        for i, e in enumerate(qb["examples"]):
            q.add_row(f"{qb['lo']:.3g}-{qb['hi']:.3g} ({qb['share']:.0%})" if i == 0 else "", f"{e['act']:.3f}",
                      _context_text(e, b["max_act"]))
    out.print(q)
    lg = Table(title="logit effects (direct path)", header_style="bold")
    for c in ("top", "effect", "bottom", "effect "):
        lg.add_column(c)
    for u, v in zip(b["logits_top"], b["logits_bottom"]):
        lg.add_row(show_token(u["token"]), f"{u['value']:+.3f}", show_token(v["token"]), f"{v['value']:+.3f}")
    out.print(lg)
    for x in b["dfa"][:1]:
        dt = Table(title=f"DFA by source, top example (pre-act {x['pre_act']:.3f})", header_style="bold")
        dt.add_column("source")
        dt.add_column("DFA", justify="right")
        for tok, v in zip(x["src_tokens"], x["dfa_src"]):
            dt.add_row(show_token(tok), f"{v:+.3f}")
        dt.add_row(Text("earlier sources", style="dim"), f"{x['dfa_earlier']:+.3f}")
        dt.add_row(Text("encoder bias", style="dim"), f"{x['dfa_bias']:+.3f}")
        out.print(dt)
    out.print(f"[dim]{escape(b['logit_note'])}[/]")
