"""`attnscope bench search`: how long each dashboard search takes on this machine (cold: reading the files;
warm: the arrays already in memory), and the whole-SAE position search."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import add_model_flags, add_output_flags, emit, print_tables, positive_int, tables_markdown


def register_bench(bench_sub: Any) -> None:
    p = bench_sub.add_parser("search", help="time `attnscope search` (token, text, label, role, position) on built dashboards",
                             description="Median wall time of each search kind over the built dashboards of every "
                             "layer: the first call reads the files (cold), later ones reuse them (warm).")
    p.add_argument("--repeats", type=positive_int, default=5, help="warm calls timed per kind (default 5)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import statistics
    import time

    from sae.analysis import search
    from sae.analysis.labels import LabelStore
    from sae.cli.dashboards import built_dirs
    from sae.cli.features import open_model_and_saes

    _, dirs = built_dirs(args, None)
    data = search.benchmark_search(dirs, LabelStore(), repeats=args.repeats)
    model, saes = open_model_and_saes(args)
    prompt = "When Mary and John went to the store, John gave a drink to"
    search.at_position(model, saes, prompt, -1)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        search.at_position(model, saes, prompt, -1)
        times.append(time.perf_counter() - t)
    data["position_warm_ms"] = 1000 * statistics.median(times)
    emit(args, data, markdown, pretty)
    return 0


def _rows(d: dict) -> list[list[str]]:
    rows = []
    for kind in ("token", "text", "label", "role"):
        rows.append([kind, f"{d[f'{kind}_cold_ms']:.1f}", f"{d[f'{kind}_warm_ms']:.1f}"])
    rows.append(["position", "", f"{d['position_warm_ms']:.1f}"])
    rows.append(["(roles, once per build)", f"{d['role_index_ms']:.1f}", ""])
    return rows


def markdown(d: dict) -> str:
    return tables_markdown(f"search timings, layers {d['layers']} (token query {d['token']!r})",
                           [("milliseconds", ["search", "cold", "warm"], _rows(d))])


def pretty(d: dict) -> None:
    from rich.markup import escape

    print_tables(escape(f"search timings, layers {d['layers']} (token query {d['token']!r})"),
                 [("milliseconds", ["search", "cold", "warm"], _rows(d))])
