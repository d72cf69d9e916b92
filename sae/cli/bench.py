"""`attnscope bench ...`: measurements of this machine. A command group: each `bench` subcommand lives in its
own module listed in `BENCH_MODULES` (`sae.cli.<module>`), which defines `register_bench(bench_subparsers)`;
a listed module that does not exist yet is skipped. `bench train` is defined here."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from sae.cli.common import (UsageError, add_output_flags, console, emit, measurements_markdown, open_model, positive_int, print_measurements)

# modules under sae.cli that add `bench` subcommands (this one adds `bench train`)
BENCH_MODULES = ["bench", "bench_features", "bench_select", "bench_workbench", "bench_search", "bench_scale"]


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
        help="SAE-training tokens/s per architecture and shape: trainer loop, whole process, SAE-step FLOP/s",
        description="For each architecture (standard, topk) and shape (the embedded default, 128 -> 1024; a 2-layer "
        "256-wide random GPT-2, 256 -> 2048, SAELens's reference shape): tokens/s of the trainer loop (steady "
        "state), tokens/s of a whole `attnscope train` process over --process-tokens tokens (start-up, model, "
        "corpus and saving included; the tokenised corpus is cached on disk, so run it twice to see a warm "
        "start), and the SAE step's FLOP/s as a fraction of a plain matmul of the same shape.",
    )
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--width", type=positive_int, default=None, help="d_sae of the first shape (default 8 x d_in)")
    p.add_argument("--batch-size", type=positive_int, default=4096)
    p.add_argument("--steps", type=positive_int, default=6, help="timed loop steps per measurement (default 6)")
    p.add_argument("--process-tokens", type=int, default=1_000_000,
                   help="tokens of each whole-process run (default 1,000,000; 0 skips them)")
    p.add_argument("--architectures", default="standard,topk", help="comma list (default standard,topk)")
    p.add_argument("--no-reference", action="store_true", help="skip the 256 -> 2048 reference shape")
    p.add_argument("--one-pass", action="store_true", help="also time all layers in one pass vs separate runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="instead: data-parallel scaling, whole `attnscope train --nproc n` runs of --process-tokens "
                   "tokens for n = 1, 2, 4, ..., N (the first of --architectures, layer 1, --width), tokens/s and "
                   "efficiency against one process")
    add_output_flags(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from sae.bench.training import bench_train
    from sae.engine.autoencoder import TRAINABLE

    archs = tuple(a.strip() for a in args.architectures.split(",") if a.strip())
    bad = [a for a in archs if a not in TRAINABLE]
    if bad or not archs:
        raise UsageError(f"--architectures takes {' and/or '.join(TRAINABLE)}, got {args.architectures!r}")
    if args.nproc:
        return run_scaling(args, archs[0])
    model = open_model(args.model, args.device)
    console.print("benchmarking SAE training (minutes: whole-process runs included; --process-tokens 0 skips them)...")
    data = bench_train(model if args.model != "default" else None, d_sae=args.width, batch_size=args.batch_size,
                       steps=args.steps, reference=not args.no_reference, device=args.device,
                       process_tokens=args.process_tokens, architectures=archs, one_pass=args.one_pass)
    emit(args, data, _markdown, _pretty)
    return 0


def run_scaling(args: argparse.Namespace, architecture: str) -> int:
    from sae.bench.scaling import bench_scaling
    from sae.engine.training.distributed import check_launch

    check_launch(args.nproc, args.device)
    if args.process_tokens < args.batch_size:
        raise UsageError(f"--process-tokens ({args.process_tokens}) is less than one batch of {args.batch_size}")
    model = open_model(args.model, "cpu")
    layer = 1 if model.n_layers > 1 else 0
    width = args.width or 8 * model.d_z
    del model
    console.print(f"data-parallel scaling up to {args.nproc} processes ({args.process_tokens:,} tokens per run)...")
    data = bench_scaling(args.model, "default", layer, architecture, width, args.process_tokens, args.batch_size,
                         args.nproc, args.device)
    emit(args, data, _scaling_markdown, None)
    return 0


def _scaling_markdown(data: dict) -> str:
    lines = [f"data-parallel scaling: {data['model']} layer {data['layer']}, {data['architecture']} -> {data['d_sae']}, "
             f"global batch {data['batch_size']:,}, {data['tokens']:,} tokens per run ({data['device']})", "",
             "| processes | trainer loop tokens/s | whole run (s) | efficiency |", "|---|---|---|---|"]
    for r in data["scaling"]:
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else f"failed: {r.get('error', '')}"
        eff = f"{r['efficiency']:.2f}" if r.get("efficiency") is not None else "–"
        lines.append(f"| {r['nproc']} | {tps} | {r['seconds']:.1f} | {eff} |")
    return "\n".join(lines)


def _rows(data: dict) -> list[tuple[str, str]]:
    rows = []
    for r in data["runs"]:
        rows.append((f"{r['model']} L{r['layer']}: {r['architecture']} {r['d_in']} -> {r['d_sae']} ({r['device']})", ""))
        rows.append(("  trainer loop", f"{r['loop_tokens_per_s']:,.0f} tokens/s"))
        proc = r.get("process")
        if proc:
            if proc.get("tokens_per_s"):
                rows.append((f"  whole process ({data['process_tokens']:,} tokens)",
                             f"{proc['tokens_per_s']:,.0f} tokens/s ({proc['seconds']:.1f} s)"))
            else:
                rows.append(("  whole process", f"failed: {proc.get('error', '')}"))
        e = r["sae_step"]
        rows.append(("  SAE step FLOP/s vs plain matmul (dense-equivalent)",
                     f"{e['step_gflops']:.1f} / {e['matmul_gflops']:.1f} GFLOP/s = {e['fraction_of_matmul']:.2f}"))
    op = data.get("one_pass")
    if op:
        a, s = op["all_layers_one_pass"], op["separate_runs"]
        rows.append((f"{op['model']}: layers {a['layers']} in one pass", f"{a['tokens_per_s']:,.0f} tokens/s"))
        if s["tokens_per_s"]:
            rows.append(("  same layers as separate runs", f"{s['tokens_per_s']:,.0f} tokens/s"))
    return rows


def _markdown(data: dict) -> str:
    return "\n".join(measurements_markdown(f"threads: {data['threads']}", _rows(data)))


def _pretty(data: dict) -> None:
    print_measurements(f"bench train ({data['threads']} threads)", _rows(data))
