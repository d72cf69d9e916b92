"""`attnscope bench scale`: every analysis timed on a random model and random SAEs of a named shape."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import add_output_flags, console, emit, measurements_markdown, positive_int, print_measurements


def register_bench(bench_sub: Any) -> None:
    from sae.bench.scale import SHAPES

    p = bench_sub.add_parser(
        "scale", help="every analysis timed at a model shape (toy, mid, gpt2-small) on random weights",
        description="Builds a GPT-2-architecture model with random weights and random SAEs (calibrated to about 32 "
        "firings a token) of the named shape in a temporary directory, nothing from the hub, and times every "
        "analysis the workbench and the CLI run: heatmaps, traces (with their model forwards), the dashboard scan "
        "(tokens/s, and its bookkeeping share), head survey (cold and from the cache), roles, the study sample, "
        "induction, IOI, eval, SAE memory in fp32 / bf16 and a training step against the matmul rate. Workloads are "
        "small where the full one would take long; the output says which. gpt2-small: about 10-15 minutes on 2 "
        "CPU cores, several GB of memory.")
    p.add_argument("--shape", choices=sorted(SHAPES), default="toy",
                   help="toy (the embedded default's shape), mid, gpt2-small (12 x 768, SAEs 768 -> 24576), "
                   "tiny (seconds, for tests)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); on a machine loaded by other "
                   "work, 1 can be faster")
    add_output_flags(p)
    p.set_defaults(func=run_scale)


def run_scale(args: argparse.Namespace) -> int:
    from sae.bench.scale import SHAPES, bench_scale

    console.print(f"bench scale: {SHAPES[args.shape].describe()} (random weights)")
    data = bench_scale(args.shape, on_stage=lambda s: console.print(f"  {s} ..."), device=args.device,
                       threads=args.threads)
    emit(args, data, _markdown, _pretty)
    return 0


def _title(data: dict) -> str:
    return f"bench scale, {data['shape']}: {data['shape_text']} ({data['threads']} threads, {data['device']})"


def _markdown(data: dict) -> str:
    from sae.bench.scale import table_rows

    lines = measurements_markdown(_title(data), table_rows(data))
    lines += ["", "workloads: " + "; ".join(f"{k}: {v}" for k, v in data["workloads"].items())]
    return "\n".join(lines)


def _pretty(data: dict) -> None:
    from sae.bench.scale import table_rows

    print_measurements(_title(data), table_rows(data))
    for k, v in data["workloads"].items():
        console.print(f"[dim]{k}: {v}[/dim]")
