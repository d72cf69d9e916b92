"""`attnscope bench features` (prompt-features latency) and `attnscope bench dashboards` (build tokens/s)."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import add_model_flags, add_output_flags, console, emit, out, positive_int
from sae.cli.features import md_table, non_negative_int, open_model_and_saes


def register_bench(bench_sub: Any) -> None:
    f = bench_sub.add_parser("features", help="median latency of one prompt's features at one layer",
                             description="Median wall time of `features` (one model pass, top-K features, DFA by "
                             "head and by source) on a prompt of --tokens tokens. The workbench wants well under 100 ms.")
    f.add_argument("--layer", type=non_negative_int, default=None, help="default: the last layer with an SAE")
    f.add_argument("--tokens", type=positive_int, default=64, help="prompt length in tokens incl. BOS (default 64)")
    f.add_argument("--repeats", type=positive_int, default=20)
    add_model_flags(f)
    add_output_flags(f)
    f.set_defaults(func=run_features)
    d = bench_sub.add_parser("dashboards", help="dashboard build throughput (tokens/s) into a temporary directory",
                             description="Build one layer's dashboards from --tokens held-out tokens into a "
                             "temporary directory and report tokens/s (target: 50k tokens/s for the embedded default).")
    d.add_argument("--layer", type=non_negative_int, default=None,
                   help="one layer (default: every layer with an SAE in one scan, as `dashboards build` does)")
    d.add_argument("--tokens", type=positive_int, default=200_000)
    d.add_argument("--batch-rows", type=positive_int, default=32)
    add_model_flags(d)
    add_output_flags(d)
    d.set_defaults(func=run_dashboards)


def _layer(args: argparse.Namespace, saes: dict) -> int:
    return args.layer if args.layer is not None else max(saes)


def run_features(args: argparse.Namespace) -> int:
    import torch

    from sae.cli.features import check_layer
    from sae.analysis.dfa import benchmark_prompt_features

    model, saes = open_model_and_saes(args)
    layer = _layer(args, saes)
    check_layer(model, saes, layer)
    with torch.inference_mode():
        data = benchmark_prompt_features(model, saes[layer], n_tokens=args.tokens, repeats=args.repeats)
    emit(args, data, _md, _pretty)
    return 0


def run_dashboards(args: argparse.Namespace) -> int:
    from sae.cli.features import check_layer
    from sae.bench.dashboards import benchmark_build
    from sae.zoo import corpus_texts

    model, saes = open_model_and_saes(args)
    if args.layer is not None:
        check_layer(model, saes, args.layer)
        saes = {args.layer: saes[args.layer]}
    console.print(f"building dashboards of layers {sorted(saes)} from up to {args.tokens:,} held-out tokens into a "
                  "temporary directory...")
    data = benchmark_build(model, saes, n_tokens=args.tokens, batch_rows=args.batch_rows,
                           docs=lambda: corpus_texts("default", "heldout"))
    emit(args, data, _md, _pretty)
    return 0


def _rows(d: dict) -> list[list[Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:,.1f}"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        elif isinstance(v, list):
            v = ", ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in v)
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items())
        rows.append([k.replace("_", " "), v])
    return rows


def _md(d: dict) -> str:
    return md_table(["measure", "value"], _rows(d))


def _pretty(d: dict) -> None:
    from sae.cli.common import FitTable as Table

    t = Table(header_style="bold")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in _rows(d):
        t.add_row(k, str(v))
    out.print(t)
