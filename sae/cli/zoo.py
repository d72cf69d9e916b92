"""`attnscope zoo ...`: rebuild, measure and describe the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae.cli.common import UsageError, open_model, add_output_flags, console, emit, out, positive_int


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
    t.add_argument("--sae-tokens", type=positive_int, default=4_000_000, help="SAE training tokens")
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


def _heldout_and_train_rows(model, max_heldout_rows: int = 256, max_train_rows: int = 4096):
    from sae.zoo import corpus
    from sae.engine.activations import pack_tokens

    ctx = min(128, model.n_ctx)
    held = pack_tokens(corpus.documents("heldout"), model.encode, ctx, model.bos_token_id, max_rows=max_heldout_rows)
    train = pack_tokens(corpus.documents("train"), model.encode, ctx, model.bos_token_id, max_rows=max_train_rows)
    return held, train


def measure(model_name: str, device: str = "auto", n_ioi: int = 200) -> dict:
    from sae.experiments import phenomena

    model = open_model(model_name, device)
    held, train = _heldout_and_train_rows(model)
    try:
        ph = phenomena.measure_all(model, held, train, n_ioi=n_ioi)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return {"model": model.name, **ph.to_dict()}


def phenomena_markdown(d: dict) -> str:
    ind, prev, ioi = d["induction"], d["previous_token"], d["ioi"]
    L, H = ind["best_head"]
    pl, ph = prev["best_head"]
    lines = [
        f"## Phenomena of {d['model']}",
        "",
        "| measurement | value | threshold |",
        "|---|---|---|",
        f"| induction score, best head {L}.{H} (repeated random tokens, attention to the token after the "
        f"first copy) | {ind['best_score']:.3f} | >= 0.5 |",
        f"| loss on first copy -> repeated copy (nats) | {ind['loss_first_copy']:.3f} -> "
        f"{ind['loss_second_copy']:.3f} | repeat far below |",
        f"| previous-token score, best head {pl}.{ph} (held-out text) | {prev['best_score']:.3f} | >= 0.5 |",
        f"| IOI logit diff IO - S ({ioi['n_prompts']} {ioi['split']} prompts, ABBA+BABA) | {ioi['logit_diff']:.3f} "
        f"| >= 1.0 |",
        f"| IOI logit diff ABBA / BABA | {ioi['logit_diff_abba']:.3f} / {ioi['logit_diff_baba']:.3f} | |",
        f"| IOI accuracy (IO above S) | {ioi['accuracy']:.3f} | |",
        f"| held-out loss (nats/token, {d['heldout_tokens']:,} tokens) | {d['heldout_loss']:.3f} | below unigram |",
        f"| unigram baseline (nats/token) | {d['unigram_loss']:.3f} | |",
        "",
        "Per-head induction scores (rows = layers):",
        "",
        "| layer | " + " | ".join(f"head {h}" for h in range(len(ind["scores"][0]))) + " |",
        "|---|" + "---|" * len(ind["scores"][0]),
    ]
    lines += [f"| {i} | " + " | ".join(f"{s:.2f}" for s in row) + " |" for i, row in enumerate(ind["scores"])]
    lines += [
        "",
        "Per-head previous-token scores:",
        "",
        "| layer | " + " | ".join(f"head {h}" for h in range(len(prev["scores"][0]))) + " |",
        "|---|" + "---|" * len(prev["scores"][0]),
    ]
    lines += [f"| {i} | " + " | ".join(f"{s:.2f}" for s in row) + " |" for i, row in enumerate(prev["scores"])]
    return "\n".join(lines)


def cmd_measure(args: argparse.Namespace) -> int:
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
            log=lambda s: console.print(s),
        )
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        raise UsageError(str(exc)) from exc
    console.print(f"[green]done[/]: artefacts in {out_dir}")
    return 0
