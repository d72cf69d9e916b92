"""`attnscope zoo ...`: rebuild, measure and describe the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae.engine.errors import AttnscopeError
from sae.cli.common import UsageError, open_model, add_output_flags, console, emit, out, positive_int
from sae.engine.safe_text import markup_escape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="the embedded default model: rebuild it, measure its phenomena")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")

    t = zsub.add_parser(
        "train-default",
        help="rebuild tokenizer, LM and SAEs of the embedded default from the offline corpus (fixed seed)",
    )
    t.add_argument("--out", default="runs/default", help="working directory (checkpoints, logs, artefacts)")
    t.add_argument("--stage", choices=["all", "lm", "saes", "card"], default="all")
    t.add_argument("--steps", type=positive_int, default=4000, help="LM phase-1 steps (32 x 128 tokens each)")
    t.add_argument("--phase2-steps", type=int, default=2500, help="LM phase-2 steps (previous-token rows added)")
    t.add_argument("--sae-tokens", type=positive_int, default=3_000_000,  # sae.zoo.build.SAE_TOKENS
                   help="SAE training tokens (the shipped SAEs: 3M)")
    t.add_argument("--no-resume", action="store_true", help="start over instead of resuming from checkpoints")
    t.add_argument("--install", action="store_true", help="copy the result into the package (developers)")
    t.set_defaults(func=cmd_train_default)

    m = zsub.add_parser("measure", help="induction, previous-token, IOI and held-out loss figures of a model")
    m.add_argument("--model", default="default")
    m.add_argument("--device", default="auto")
    m.add_argument("--n-ioi", type=positive_int, default=200)
    add_output_flags(m)
    m.set_defaults(func=cmd_measure)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def measure(model_name: str, device: str = "auto", n_ioi: int = 200) -> dict:
    from sae.zoo.measure import measure as measure_model

    model = open_model(model_name, device)
    try:
        return measure_model(model, n_ioi=n_ioi)
    except AttnscopeError:
        raise
    except ValueError as exc:  # phenomena's own checks (too few single-token names, ...)
        raise UsageError(str(exc)) from exc


def cmd_measure(args: argparse.Namespace) -> int:
    from sae.zoo.measure import phenomena_markdown

    d = measure(args.model, args.device, args.n_ioi)
    emit(args, d, phenomena_markdown, pretty=lambda x: out.print(phenomena_markdown(x)))
    return 0


def cmd_train_default(args: argparse.Namespace) -> int:
    from sae.engine.safe_io import check_writable_dir
    from sae.zoo import build as default_build

    out_dir = check_writable_dir(Path(args.out), "--out")  # a file or read-only place: one line, before any work
    try:
        default_build.run(
            out_dir,
            stage=args.stage,
            steps=args.steps,
            phase2_steps=args.phase2_steps,
            sae_tokens=args.sae_tokens,
            resume=not args.no_resume,
            install=args.install,
            log=lambda s: console.print(s, markup=False),
        )
    except AttnscopeError:
        raise
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        raise UsageError(str(exc)) from exc
    console.print(f"[green]done[/]: artefacts in {markup_escape(str(out_dir))}")
    return 0
