"""`attnscope bench select`: the top-k selection against `torch.topk` and a plain matmul (`sae.bench.selection`)."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import add_output_flags, emit, out, positive_int


def register_bench(bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "select", help="top-k selection vs torch.topk and a plain matmul, and the top-k step with each",
        description="For 4096 x 128 -> 1024 (k 32 and 24) and 4096 x 256 -> 2048 (k 32): the time of the encoder "
        "matmul, of each row's top-k selection by torch.topk, by attnscope's previous two-stage selection and by "
        "sae.engine.selection.topk_rows (also in matmul times), whether each selects torch.topk's set, and the "
        "hand-written top-k step's dense-equivalent FLOP/s over the matmul's with each selection. On a CPU with one "
        "torch thread (OMP_NUM_THREADS=1) the clock is this process's CPU time, so other work on the machine does "
        "not count.")
    p.add_argument("--rounds", type=positive_int, default=10, help="timed calls of each, interleaved (the best counts)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_output_flags(p)
    p.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    from sae.bench.selection import bench_select

    emit(args, bench_select(rounds=args.rounds, device=args.device), _markdown, _pretty)
    return 0


COLUMNS = ("shape", "selection", "ms", "x matmul", "same set as topk", "step vs matmul")


def _rows(data: dict) -> list[list[str]]:
    rows = []
    for s in data["shapes"]:
        shape = f"{s['batch']} x {s['d_in']} -> {s['d_sae']}, k {s['k']} (matmul {s['matmul_s'] * 1e3:.1f} ms)"
        for name, r in s["select"].items():
            same = "yes" if r["same_as_topk"] else "NO"
            if r["same_as_topk"] and r["rows_with_topk_indices"] < 1:
                same += f" (ties: {1 - r['rows_with_topk_indices']:.2%} rows chose other equal values)"
            rows.append([shape, name, f"{r['seconds'] * 1e3:.1f}", f"{r['matmuls']:.2f}", same,
                         f"{r['step_fraction_of_matmul']:.2f}"])
    return rows


def _markdown(data: dict) -> str:
    lines = [f"bench select: {data['device']}, {data['threads']} threads, {data['clock']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(data)]
    return "\n".join(lines)


def _pretty(data: dict) -> None:
    from sae.cli.common import FitTable as Table

    t = Table(title=f"bench select ({data['device']}, {data['threads']} threads, {data['clock']})")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("shape", "selection", "same set as topk") else "right")
    for r in _rows(data):
        t.add_row(*r)
    out.print(t)
