"""`attnscope train`: train attention-output SAEs (one per layer, one model pass per batch)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from sae.cli.common import UsageError, open_model, add_output_flags, console, emit, out, positive_int, progress_bar

DEFAULTS = {
    "architecture": "standard",
    "l1": 1.0,
    "k": 32,
    "lr": 1.2e-3,
    "tokens": 2_000_000,
    "batch_size": 4096,
    "context_size": 128,
    "seed": 0,
    "checkpoint_every": 1000,
    "warmup_steps": 1000,
    "buffer_batches": 16,
    "resample_every": 25_000,
    "resample_window": 12_500,
}


def parse_layers(text: str, n_layers: int) -> list[int]:
    if text == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--layers expects a comma list like 0,1,2 or 'all', got {text!r}") from None
    if not layers:
        raise UsageError("--layers names no layer")
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise UsageError(f"layer {bad[0]} is outside the model (layers 0..{n_layers - 1})")
    return layers


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train attention-output SAEs on hook_z",
        description="Train one SAE per layer on blocks.L.attn.hook_z (value bias folded out), all layers from one "
        "model pass per batch. Writes OUT/blocks.L.attn.hook_z/ (SAELens format), OUT/checkpoint.pt and "
        "OUT/train_config.json. Ctrl-C or SIGTERM writes a checkpoint; --resume continues it.",
    )
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--corpus", default="default", help="'default' (embedded corpus), a .txt file or a dir of .txt/.py/.md")
    p.add_argument("--layers", default="all", help="comma list (0,1,2) or 'all' (default)")
    p.add_argument("--architecture", choices=["standard", "topk"], default=None, help="default: standard")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--width", type=positive_int, default=None, help="d_sae, the number of features")
    g.add_argument("--expansion", type=positive_int, default=None, help="d_sae = expansion * n_heads * d_head (default 8)")
    p.add_argument("--l1", type=float, default=None, help=f"L1 coefficient, standard (default {DEFAULTS['l1']})")
    p.add_argument("--k", type=positive_int, default=None, help=f"active latents, topk (default {DEFAULTS['k']})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--tokens", type=int, default=None, help=f"training tokens (default {DEFAULTS['tokens']:,})")
    p.add_argument("--batch-size", type=positive_int, default=None, help="activations per SAE step (default 4096)")
    p.add_argument("--context-size", type=positive_int, default=None, help="tokens per row, BOS first (default 128, or the model's context if shorter)")
    p.add_argument("--warmup-steps", type=int, default=None, help="LR warm-up steps (default 1000)")
    p.add_argument("--buffer-batches", type=positive_int, default=None, help="shuffle buffer size in batches (default 16)")
    p.add_argument("--resample-every", type=int, default=None, help="steps between dead-feature resamples (default 25000)")
    p.add_argument("--resample-window", type=int, default=None, help="steps a feature must stay silent to be resampled")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the SAEs already in --out (a fresh run)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1000; 0: end only)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (bf16 autocast on CUDA)")
    add_output_flags(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace, model, layers: list[int]):
    from sae.engine.training import TrainConfig, TrainingError

    def val(name: str) -> Any:
        v = getattr(args, name)
        return DEFAULTS[name] if v is None else v

    if args.width:
        d_sae = args.width
    else:
        d_sae = (args.expansion or 8) * model.d_z
    try:
        return TrainConfig(
            layers=layers,
            architecture=val("architecture"),
            d_sae=d_sae,
            l1_coeff=val("l1"),
            k=val("k"),
            lr=val("lr"),
            warmup_steps=val("warmup_steps"),
            total_tokens=val("tokens"),
            batch_size=val("batch_size"),
            context_size=args.context_size or min(DEFAULTS["context_size"], model.n_ctx),
            buffer_batches=val("buffer_batches"),
            resample_every=val("resample_every"),
            resample_window=val("resample_window"),
            seed=val("seed"),
            checkpoint_every=val("checkpoint_every"),
            autocast=args.dtype in ("bfloat16", "bf16"),
            model_name=args.model,
            corpus=args.corpus,
        )
    except TrainingError as exc:
        raise UsageError(str(exc)) from None


def resumed_config(args: argparse.Namespace, out_dir: Path):
    """The saved config of the run in `out_dir`, with the few settings a resume may change."""
    import json

    from sae.engine.training import CONFIG_FILE, TrainConfig, TrainingError

    path = out_dir / CONFIG_FILE
    try:
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"--resume: {out_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    except (ValueError, TypeError, TrainingError) as exc:
        raise UsageError(f"--resume: {path} is damaged ({exc})") from None
    if args.tokens is not None:
        cfg.total_tokens = args.tokens
        if cfg.total_tokens < cfg.batch_size:
            raise UsageError(f"--tokens {args.tokens} is less than one batch of {cfg.batch_size}")
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be a whole number >= 0 (got {args.checkpoint_every})")
        cfg.checkpoint_every = args.checkpoint_every
    return cfg


def existing_saes(out_dir: Path) -> list[Path]:
    """SAE directories (cfg.json beside weights) directly under `out_dir`."""
    from sae.engine.formats import CFG_FILE, WEIGHTS_FILE

    if not out_dir.is_dir():
        return []
    return sorted(d for d in out_dir.iterdir() if (d / CFG_FILE).is_file() and (d / WEIGHTS_FILE).is_file())


def run(args: argparse.Namespace) -> int:
    from sae.engine.safe_io import check_writable_dir
    from sae.engine.training import lock_output_dir

    if args.tokens is not None and args.tokens <= 0:
        raise UsageError(f"--tokens must be positive (got {args.tokens})")
    if args.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
        raise UsageError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
    out_dir = Path(args.out).expanduser()
    check_writable_dir(out_dir, "--out")  # a file, a read-only place: one line now, not after the model loads
    lock = lock_output_dir(out_dir)  # a second `attnscope train` into the same --out is refused here
    try:
        return _run_locked(args, out_dir, lock)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, out_dir: Path, lock) -> int:
    import torch

    from sae.engine.activations import CorpusError, corpus_token_rows
    from sae.engine.training import Trainer, TrainingDiverged, TrainingError, stop_on_signals
    from sae.zoo import corpus_texts

    if args.resume:
        cfg = resumed_config(args, out_dir)
        model_name, corpus = cfg.model_name, cfg.corpus
        if args.model != "default" and args.model != model_name:
            raise UsageError(f"--resume: the run was made with --model {model_name}, not {args.model}")
    else:
        if (out_dir / "checkpoint.pt").exists():
            raise UsageError(f"{out_dir} already holds a training run; pass --resume to continue it or pick another --out")
        found = existing_saes(out_dir)
        if found and not args.overwrite:
            raise UsageError(
                f"{out_dir} already holds {len(found)} SAE(s) ({found[0].name}, ...); pass --overwrite to replace "
                "them or pick another --out"
            )
        model_name, corpus = args.model, args.corpus
    model = open_model(model_name, args.device)
    if not args.resume:
        cfg = build_config(args, model, parse_layers(args.layers, model.n_layers))
    try:
        rows = corpus_token_rows(model, corpus_texts(corpus, "train"), cfg.context_size)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None

    cancel = threading.Event()
    try:
        trainer = Trainer(model, rows, cfg, out_dir, cancel=cancel)
        trainer.out_lock = lock
        if args.resume:
            trainer.resume()
    except TrainingError as exc:
        raise UsageError(str(exc)) from None
    console.print(
        f"training {len(cfg.layers)} SAE(s) on {model.name} layers {cfg.layers}: {cfg.architecture}, "
        f"{model.d_z} -> {cfg.d_sae}, {cfg.total_steps:,} steps of {cfg.batch_size:,} tokens "
        f"({rows.shape[0]:,} corpus rows){' (resumed at step ' + str(trainer.step) + ')' if args.resume else ''}"
    )
    with progress_bar("train", cfg.total_steps * cfg.batch_size) as advance:
        seen = {"tokens": trainer.step * cfg.batch_size}
        advance(seen["tokens"])

        def on_progress(info: dict) -> None:
            delta = info["tokens"] - seen["tokens"]
            seen["tokens"] = info["tokens"]
            first = next(iter(info["layers"].values()), {})
            note = (
                f"loss {first.get('loss', float('nan')):.3g} L0 {first.get('l0', float('nan')):.1f} "
                f"EV {first.get('explained_variance', float('nan')):.3f} dead {first.get('dead_fraction', float('nan')):.2f}"
            )
            advance(max(delta, 0), note)

        trainer.on_progress = on_progress
        try:
            with stop_on_signals(cancel), torch.inference_mode(False):
                outcome = trainer.run()
        except TrainingDiverged as exc:
            raise UsageError(str(exc)) from None
    rows_out = [
        {"layer": layer, "hook": f"blocks.{layer}.attn.hook_z", "path": str(out_dir / f"blocks.{layer}.attn.hook_z"), **m}
        for layer, m in outcome.metrics.items()
    ]
    data = {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": outcome.total_steps,
        "tokens": outcome.tokens,
        "tokens_per_s": outcome.tokens_per_s,
        "seconds": outcome.seconds,
        "checkpoint": str(outcome.checkpoint),
        "layers": rows_out,
    }
    emit(args, data, _markdown, _pretty)
    if outcome.status == "cancelled":
        console.print(f"stopped at step {outcome.step}; checkpoint written. Continue with: attnscope train --out {out_dir} --resume")
        return 130
    return 0


COLUMNS = [("layer", "{}"), ("loss", "{:.4g}"), ("mse", "{:.4g}"), ("l0", "{:.1f}"),
           ("explained_variance", "{:.3f}"), ("dead_fraction", "{:.3f}"), ("path", "{}")]


def _fmt(fmt: str, v: Any) -> str:
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _markdown(data: dict) -> str:
    lines = [
        f"status: {data['status']}, step {data['step']}/{data['total_steps']}, {data['tokens']:,} tokens, "
        f"{data['tokens_per_s']:,.0f} tokens/s",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in data["layers"]:
        lines.append("| " + " | ".join(_fmt(f, row.get(c, "")) for c, f in COLUMNS) + " |")
    return "\n".join(lines)


def _pretty(data: dict) -> None:
    from sae.cli.common import FitTable as Table

    t = Table(title=f"SAE training: {data['status']}, step {data['step']}/{data['total_steps']}, "
              f"{data['tokens']:,} tokens at {data['tokens_per_s']:,.0f} tokens/s")
    for c, _ in COLUMNS:
        t.add_column(c, justify="left" if c == "path" else "right")
    for row in data["layers"]:
        t.add_row(*(_fmt(f, row.get(c, "")) for c, f in COLUMNS))
    out.print(t)
