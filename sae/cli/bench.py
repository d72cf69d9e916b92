"""`attnscope bench ...`: measurements of this machine. A command group: each `bench` subcommand lives in its
own module listed in `BENCH_MODULES` (`sae.cli.<module>`), which defines `register_bench(bench_subparsers)`;
a listed module that does not exist yet is skipped. `bench train` is defined here."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from sae.cli.common import open_model, add_output_flags, console, emit, out, positive_int

# modules under sae.cli that add `bench` subcommands (this one adds `bench train`)
BENCH_MODULES = ["bench", "bench_features", "bench_workbench"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="measure this machine (bench train, ...)",
                              description="Benchmarks of attnscope's engine on this machine.")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    p.set_defaults(func=lambda args: _no_sub(p))
    for name in BENCH_MODULES:
        try:
            mod = importlib.import_module(f"sae.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sae.cli.{name}":
                continue
            raise
        mod.register_bench(bench_sub)


def _no_sub(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def register_bench(bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "train",
        help="SAE-training tokens/s: one layer, all layers in one pass, separate runs; SAE-step FLOP/s",
        description="SAE-training throughput on this machine for the embedded default (or --model): one layer, all "
        "layers from one model pass, the same layers as separate runs; the SAE step's FLOP/s as a fraction of a "
        "plain matmul of the same shape; the SAELens reference shape (2-layer 256-wide GPT-2, 256 -> 2048); on "
        "CUDA a GPT-2-Small-shaped model under bf16 autocast.",
    )
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--width", type=positive_int, default=None, help="d_sae (default 16 x d_in)")
    p.add_argument("--batch-size", type=positive_int, default=4096)
    p.add_argument("--steps", type=positive_int, default=6, help="timed steps per measurement (default 6)")
    p.add_argument("--no-reference", action="store_true", help="skip the SAELens reference shape")
    p.add_argument("--device", default="auto")
    add_output_flags(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from sae.bench.training import bench_train

    model = open_model(args.model, args.device)
    console.print("benchmarking SAE training (this takes a minute or two)...")
    data = bench_train(model, d_sae=args.width, batch_size=args.batch_size, steps=args.steps,
                       reference=not args.no_reference, device=args.device)
    emit(args, data, _markdown, _pretty)
    return 0


def _rows(data: dict) -> list[tuple[str, str]]:
    rows = []
    for r in data["runs"]:
        head = f"{r['model']} ({r['d_in']} -> {r['d_sae']}, {r['device']}{', bf16' if r['autocast_bf16'] else ''})"
        rows.append((head, ""))
        rows.append(("  model pass (all layers)", f"{r['model_pass_tokens_per_s']:,.0f} tokens/s"))
        rows.append((f"  one layer (L{r['one_layer']['layer']})", f"{r['one_layer']['tokens_per_s']:,.0f} tokens/s"))
        a, s = r["all_layers_one_pass"], r["separate_runs"]
        rows.append((f"  layers {a['layers']} in one pass", f"{a['tokens_per_s']:,.0f} tokens/s ({a['seconds']:.2f} s)"))
        if s["tokens_per_s"]:
            rows.append(("  same layers as separate runs", f"{s['tokens_per_s']:,.0f} tokens/s ({s['seconds']:.2f} s)"))
        rows.append(("  one pass / (one model pass + SAE steps)", f"{r['one_pass_over_bound']:.2f}"))
        e = r["sae_step"]
        rows.append(("  SAE step FLOP/s vs plain matmul",
                     f"{e['step_gflops']:.1f} / {e['matmul_gflops']:.1f} GFLOP/s = {e['fraction_of_matmul']:.2f}"))
        if "vs_saelens" in r:
            rows.append(("  vs SAELens 6.54 (8.5k tokens/s)", f"{r['vs_saelens']:.2f}x"))
    return rows


def _markdown(data: dict) -> str:
    lines = [f"threads: {data['threads']}", "", "| measurement | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(data)]
    return "\n".join(lines)


def _pretty(data: dict) -> None:
    from sae.cli.common import FitTable as Table

    t = Table(title=f"bench train ({data['threads']} threads)")
    t.add_column("measurement")
    t.add_column("value", justify="right")
    for k, v in _rows(data):
        t.add_row(k, v)
    out.print(t)
