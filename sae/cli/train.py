"""`attnscope train`: train attention-output SAEs (one per layer, one model pass per batch).

Every training flag, its default and its help come from `TrainConfig`'s fields (`sae.engine.training.config`); this
module adds only where the data comes from (--model, --corpus, --activations), where it goes (--out, --resume),
--preset, --device and --dtype.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path
from typing import Any

from sae.cli.common import UsageError, add_output_flags, console, emit, open_model, out, progress_bar

DESCRIPTION = (
    "Train one SAE per layer on blocks.L.attn.hook_z (value bias folded out), all layers from one model pass per "
    "batch. Writes OUT/blocks.L.attn.hook_z/ (SAELens format, reading raw z), OUT/checkpoint.pt and "
    "OUT/train_config.json. Ctrl-C or SIGTERM writes a checkpoint; --resume continues it. "
    "With no flags: top-k SAEs (k=32, 8x wide, AuxK against dead latents) on every layer of the embedded default; "
    "top-k is the default because it fixes L0 on every layer whatever its activation norms, where one L1 "
    "coefficient gives layers very different L0. Warm-up, resampling and the dead-latent window scale with the run "
    "length (the chosen values are printed). A comma list for --k or --l1 trains a sweep, every point from the "
    "same batches, then prints the L0 vs CE-loss-recovered frontier."
)

PAPER_EPILOG = (
    "--preset paper: the paper's GPT-2 Small recipe (Kissane et al. 2024): standard ReLU SAEs on raw z (no "
    "normalisation), width 24576 (32 x 768; 49152 for layers 5 and 7), per-layer L1 below, lr 1.2e-3, Adam "
    "(0.0, 0.9999) and b_dec starting at zeros (the authors' train.py; the released runs' names carry no betas), "
    "1000 warm-up steps re-warmed after each resample, resampling every 25k steps at most 4 times "
    "(dead = frequency <= 1e-6 over the last 12.5k steps), 2e9 tokens in batches of 4096, context 128, a "
    "384-batch shuffle buffer, bf16 autocast. Meant for `--model gpt2` on a GPU; flags given with it override it. "
    "The paper's per-layer L1 and the L0 it reports:"
)


def _number_list(cast: type, what: str):
    """An argparse type: one number, or a comma list of them (a sweep) returned as a list."""

    def parse(text: str) -> Any:
        try:
            vals = [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or a comma list of them, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected at least one {what}")
        return vals[0] if len(vals) == 1 else vals

    return parse


def _int(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


PARSERS = {"int": _int, "float": _float, "float_list": _number_list(float, "a number"),
           "int_list": _number_list(int, "a whole number"), "str": str,
           "layers": str}


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(f) -> str:
    from sae.engine.training.config import field_default

    if f.name == "layers":
        return "all"
    d = field_default(f.name)
    if d is None:
        return f.metadata.get("shown") or "none"
    if isinstance(d, float):
        return f"{d:g}"
    if isinstance(d, int) and not isinstance(d, bool) and d >= 10_000:
        return f"{d:,}"
    return str(d)


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
    from sae.engine.training.config import PRESETS, option_fields, paper_table

    p = subparsers.add_parser(
        "train", help="train attention-output SAEs on hook_z", description=textwrap.fill(DESCRIPTION, 100),
        epilog=textwrap.fill(PAPER_EPILOG, 100) + "\n\n" + textwrap.indent(paper_table(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--corpus", default="default", help="'default' (embedded corpus), a .txt file or a dir of .txt/.py/.md")
    p.add_argument("--activations", default=None, metavar="DIR",
                   help="train from an activation cache written by `attnscope cache` (no model pass)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a published recipe (see below)")
    for f in option_fields():
        kind = f.metadata.get("kind")
        kwargs: dict[str, Any] = {"default": None, "dest": f.name,
                                  "help": f"{f.metadata['help']} (default: {_default_text(f)})".replace("%", "%%")}
        if kind == "choice":
            kwargs["choices"] = list(f.metadata["choices"])
        elif kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = PARSERS[kind]
        p.add_argument(flag_of(f), **kwargs)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the SAEs already in --out (a fresh run)")
    p.add_argument("--eval-tokens", type=_int, default=32_768, help="held-out tokens scoring each sweep point "
                   "(default 32,768)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (bf16 autocast on CUDA)")
    p.add_argument("--nproc", type=_int, default=1,
                   help="data-parallel processes on this machine (one per GPU, or CPU cores): launches torchrun "
                   "(python -m torch.distributed.run); --batch-size stays the global batch. Under torchrun itself "
                   "(torchrun --nproc-per-node N -m workbench.main train ...) leave it out (default 1)")
    add_output_flags(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace, d_in: int, n_layers: int, n_ctx: int, model_name: str):
    """The run's `TrainConfig`: preset, then the flags given; errors become one-line UsageErrors."""
    from sae.engine.training.config import PRESETS, TrainConfig, TrainingError, option_fields

    values: dict[str, Any] = dict(PRESETS[args.preset]) if getattr(args, "preset", None) else {}
    for f in option_fields():
        v = getattr(args, f.name, None)
        if v is not None and v is not False:
            values[f.name] = v
    if args.dtype in ("bfloat16", "bf16"):
        values["autocast"] = True
    values["layers"] = parse_layers(values.get("layers", "all"), n_layers)
    values.setdefault("context_size", min(128, n_ctx))
    values["model_name"] = model_name
    values["corpus"] = args.corpus
    values["activations"] = args.activations or ""
    try:
        return TrainConfig(**values)
    except TrainingError as exc:
        raise UsageError(str(exc)) from None


def resumed_config(args: argparse.Namespace, out_dir: Path):
    """The saved config of the run in `out_dir`, with the few settings a resume may change."""
    import json

    from sae.engine.training.loop import CONFIG_FILE, TrainConfig, TrainingError

    path = out_dir / CONFIG_FILE
    try:
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"--resume: {out_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    except (ValueError, TypeError, TrainingError) as exc:
        raise UsageError(f"--resume: {path} is damaged ({exc})") from None
    if args.total_tokens is not None:
        if args.total_tokens < cfg.batch_size:
            raise UsageError(f"total_tokens ({args.total_tokens}) is less than one batch of {cfg.batch_size}")
        cfg.total_tokens = args.total_tokens
    if args.prefetch is not None:
        if args.prefetch < 0:
            raise UsageError(f"prefetch must be >= 0 (got {args.prefetch})")
        cfg.prefetch = args.prefetch
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 0:
            raise UsageError(f"checkpoint_every must be >= 0 (got {args.checkpoint_every})")
        cfg.checkpoint_every = args.checkpoint_every
    return cfg


def run(args: argparse.Namespace) -> int:
    from sae.engine.training.distributed import DistributedError, init_from_env, launched_by_torchrun, shutdown

    if args.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
        raise UsageError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")

    if args.nproc != 1 and not launched_by_torchrun():
        return launch_torchrun(args)
    sync = None
    if launched_by_torchrun():  # one rank of a data-parallel run: only rank 0 prints and writes files
        try:
            sync, dist_device = init_from_env(args.device)
        except DistributedError as exc:
            raise UsageError(str(exc)) from None
        args.device = str(dist_device)
        if not sync.is_main:
            console.quiet = out.quiet = True
    try:
        return _run(args, sync)
    finally:
        if sync is not None:
            shutdown()


def launch_torchrun(args: argparse.Namespace) -> int:
    """`attnscope train --nproc N ...`: check the split, then run `python -m torch.distributed.run` with N
    processes on 127.0.0.1 and a free port, each running this command without --nproc."""
    import os
    import subprocess
    import sys

    from sae.engine.training.distributed import DistributedError, check_launch, check_split, free_port
    from sae.engine.training.config import PRESETS, field_default

    n = args.nproc
    try:
        check_launch(n, args.device)
        if args.resume:
            cfg = resumed_config(args, Path(args.out).expanduser())
            check_split(cfg.batch_size, cfg.data_shards or n, n)
        else:
            preset = PRESETS.get(args.preset or "", {})
            batch = args.batch_size or preset.get("batch_size") or field_default("batch_size")
            check_split(batch, args.data_shards or n, n)
    except DistributedError as exc:
        raise UsageError(str(exc)) from None
    argv = strip_nproc(getattr(args, "argv", None) or sys.argv[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(n),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "workbench.main", *argv]
    env = dict(os.environ)
    if not args.device.startswith("cuda"):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    console.print(f"launching {n} processes: {' '.join(cmd[1:])}")
    return subprocess.call(cmd, env=env)


def strip_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc N` / `--nproc=N`."""
    out_: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out_.append(a)
    return out_


def existing_saes(out_dir: Path) -> list[Path]:
    """SAE directories (cfg.json beside weights) directly under `out_dir`."""
    from sae.engine.formats import CFG_FILE, WEIGHTS_FILE

    if not out_dir.is_dir():
        return []
    return sorted(d for d in out_dir.iterdir() if (d / CFG_FILE).is_file() and (d / WEIGHTS_FILE).is_file())


def _run(args: argparse.Namespace, sync) -> int:
    from sae.engine.safe_io import check_writable_dir
    from sae.engine.training.loop import lock_output_dir

    out_dir = Path(args.out).expanduser()
    lock = None
    if sync is None or sync.is_main:  # one writer per --out: rank 0 holds the lock for the whole run
        check_writable_dir(out_dir, "--out")  # a file, a read-only place: one line now, not after the model loads
        lock = lock_output_dir(out_dir)  # a second `attnscope train` into the same --out is refused here
    try:
        return _run_locked(args, sync, out_dir, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args: argparse.Namespace, sync, out_dir: Path, lock) -> int:
    import torch

    from sae.engine.activations import CorpusError
    from sae.engine.jobs import CancelToken, Progress
    from sae.engine.training.loop import Trainer, TrainingDiverged, TrainingError, stop_on_signals

    source = None
    model = None
    if args.resume:
        cfg = resumed_config(args, out_dir)
        if args.model != "default" and args.model != cfg.model_name:
            raise UsageError(f"--resume: the run was made with --model {cfg.model_name}, not {args.model}")
        if cfg.activations:
            args.activations = cfg.activations
    elif (out_dir / "checkpoint.pt").exists() and not args.overwrite:
        raise UsageError(f"{out_dir} already holds a training run; pass --resume to continue it, --overwrite to "
                         "start again, or pick another --out")
    elif existing_saes(out_dir) and not args.overwrite:
        found = existing_saes(out_dir)
        raise UsageError(
            f"{out_dir} already holds {len(found)} SAE(s) ({found[0].name}, ...); pass --overwrite to replace "
            "them or pick another --out"
        )
    if args.activations:
        from sae.engine.activation_cache import CacheError, CacheSource, read_manifest

        try:
            manifest = read_manifest(args.activations)
            if not args.resume:
                if args.layers is None:
                    args.layers = ",".join(str(x) for x in manifest.layers)
                cfg = build_config(args, manifest.d_in, max(manifest.layers) + 1, manifest.context_size, manifest.model)
            source = CacheSource(args.activations, cfg.layers, cfg.rows_per_pass, cfg.seed)
        except CacheError as exc:
            raise UsageError(str(exc)) from None
        if cfg.context_size != manifest.context_size:
            raise UsageError(f"the cache holds rows of {manifest.context_size} tokens, the run asks for {cfg.context_size}")
        rows = None
    else:
        from sae.zoo.token_cache import cached_token_rows

        model = open_model(args.model if not args.resume else cfg.model_name, args.device)
        if not args.resume:
            cfg = build_config(args, model.d_z, model.n_layers, model.n_ctx, args.model)
        try:
            rows = cached_token_rows(model, cfg.corpus or "default", cfg.context_size, split="train")
        except CorpusError as exc:
            raise UsageError(str(exc)) from None

    cancel = CancelToken()
    try:
        device = None
        if model is None:
            device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        trainer = Trainer(model, rows, cfg, out_dir, cancel=cancel, source=source, device=device, sync=sync)
        trainer.out_lock = lock
        if args.resume:
            trainer.resume()
    except TrainingError as exc:
        raise UsageError(str(exc)) from None
    sweep = f" sweep {cfg.sparsity_param} = {', '.join(f'{v:g}' for v in cfg.sweep_values)}," if cfg.is_sweep else ""
    where = f"cache {args.activations}" if source is not None else f"{rows.shape[0]:,} corpus rows"
    console.print(
        f"training {len(trainer.units)} SAE(s) on {cfg.model_name} layers {cfg.layers}: {cfg.architecture},{sweep} "
        f"{trainer.d_in} -> {cfg.width(cfg.layers[0], trainer.d_in)}, {cfg.total_steps:,} steps of "
        f"{cfg.batch_size:,} tokens ({where}){' (resumed at step ' + str(trainer.step) + ')' if args.resume else ''}"
    )
    if sync is not None:
        console.print(f"data parallel: {sync.world_size} processes, {cfg.batch_size // sync.world_size:,} tokens each "
                      f"per step, {cfg.data_shards} data shards")
    console.print(trainer.schedule.describe(cfg.architecture))
    for warning in trainer.schedule.warnings():
        console.print(f"[yellow]warning:[/] {warning}")
    with progress_bar("train", cfg.total_steps * cfg.batch_size) as advance:
        seen = {"tokens": trainer.step * cfg.batch_size}
        advance(seen["tokens"])

        def on_progress(p: Progress) -> None:
            delta = p.done - seen["tokens"]
            seen["tokens"] = p.done
            m = p.metrics
            nan = float("nan")
            note = (f"{p.stage} loss {m.get('loss', nan):.3g} L0 {m.get('l0', nan):.1f} "
                    f"EV {m.get('explained_variance', nan):.3f} dead {m.get('dead_fraction', nan):.2f}")
            advance(max(delta, 0), note)

        trainer.on_progress = on_progress
        try:
            with stop_on_signals(cancel), torch.inference_mode(False):
                outcome = trainer.run()
        except TrainingDiverged as exc:
            raise UsageError(str(exc)) from None
    data: dict[str, Any] = {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": outcome.total_steps,
        "tokens": outcome.tokens,
        "tokens_per_s": outcome.tokens_per_s,
        "seconds": outcome.seconds,
        "checkpoint": str(outcome.checkpoint),
        "schedule": trainer.schedule.to_dict(),
        "layers": [
            {"layer": layer, "hook": f"blocks.{layer}.attn.hook_z", "path": str(out_dir / f"blocks.{layer}.attn.hook_z"), **m}
            for layer, m in outcome.metrics.items()
        ] if not cfg.is_sweep else [],
    }
    if cfg.is_sweep and outcome.status == "finished" and (sync is None or sync.is_main):
        data["sweep"] = [p.to_dict() for p in score_sweep(args, cfg, outcome, trainer, model)]
    if sync is None or sync.is_main:  # one report per run, not one per process
        emit(args, data, _markdown, _pretty)
    if outcome.status == "cancelled":
        console.print(f"stopped at step {outcome.step}; checkpoint written. Continue with: attnscope train --out {out_dir} --resume")
        return 130
    return 0


def score_sweep(args: argparse.Namespace, cfg, outcome, trainer, model) -> list:
    """Every sweep point scored on held-out tokens (CE loss recovered needs the model; without one, the
    training figures of the last step are used) and the recommended point marked."""
    from sae.engine.training.sweep import SweepPoint, choose_point
    from sae.engine.training.loop import sweep_label

    if model is None:
        try:
            model = open_model(cfg.model_name, args.device)
        except UsageError:
            model = None
    rows = None
    if model is not None and args.eval_tokens > 0:
        from sae.engine.activations import CorpusError
        from sae.zoo.token_cache import cached_token_rows

        try:
            rows = cached_token_rows(model, cfg.corpus or "default", cfg.context_size, split="heldout",
                                     max_rows=max(1, args.eval_tokens // cfg.context_size))
        except CorpusError:
            rows = None
    points = []
    for value in cfg.sweep_values:
        label = sweep_label(cfg.sparsity_param, value)
        saes = outcome.sweep[label]
        point = SweepPoint(label, float(value))
        if rows is not None:
            from sae.engine.metrics import evaluate_saes

            for r in evaluate_saes(model, {layer: s.to(model.device) for layer, s in saes.items()}, rows):
                point.layers[r.layer] = {"l0": r.l0, "explained_variance": r.explained_variance,
                                         "ce_loss_recovered": r.ce_loss_recovered, "dead_fraction": r.dead_fraction}
        else:
            for layer, m in outcome.sweep_metrics[label].items():
                point.layers[layer] = {k: m.get(k, float("nan")) for k in ("l0", "explained_variance", "dead_fraction")}
        points.append(point)
    choose_point(points)
    return points


COLUMNS = [("layer", "{}"), ("loss", "{:.4g}"), ("mse", "{:.4g}"), ("l0", "{:.1f}"),
           ("explained_variance", "{:.3f}"), ("dead_fraction", "{:.3f}"), ("path", "{}")]
SWEEP_COLUMNS = [("point", "{}"), ("mean_l0", "{:.1f}"), ("mean_explained_variance", "{:.3f}"),
                 ("mean_ce_loss_recovered", "{:.3f}"), ("mean_dead_fraction", "{:.3f}"), ("chosen", "{}")]


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _sweep_rows(data: dict) -> list[list[str]]:
    rows = []
    for p in data.get("sweep", []):
        cells = {**p, "point": p["label"], "chosen": "<- chosen" if p["chosen"] else ""}
        rows.append([_fmt(f, cells.get(c)) for c, f in SWEEP_COLUMNS])
    return rows


def _plot(data: dict) -> str:
    from sae.engine.training.sweep import SweepPoint, text_plot

    pts = []
    for p in data.get("sweep", []):
        pt = SweepPoint(p["label"], p["value"], {int(k): v for k, v in p["layers"].items()}, p["chosen"])
        pts.append(pt)
    has_ce = any(not math.isnan(p.mean("ce_loss_recovered")) for p in pts)
    return text_plot(pts, "ce_loss_recovered" if has_ce else "explained_variance")


def _head(data: dict) -> str:
    return (f"status: {data['status']}, step {data['step']}/{data['total_steps']}, {data['tokens']:,} tokens, "
            f"{data['tokens_per_s']:,.0f} tokens/s")


def _markdown(data: dict) -> str:
    lines = [_head(data), ""]
    if data.get("sweep"):
        lines += ["| " + " | ".join(c for c, _ in SWEEP_COLUMNS) + " |", "|" + "---|" * len(SWEEP_COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in _sweep_rows(data)]
        lines += ["", "```text", _plot(data), "```"]
        return "\n".join(lines)
    lines += ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in data["layers"]:
        lines.append("| " + " | ".join(_fmt(f, row.get(c, "")) for c, f in COLUMNS) + " |")
    return "\n".join(lines)


def _pretty(data: dict) -> None:
    from sae.cli.common import FitTable as Table

    if data.get("sweep"):
        t = Table(title=f"sparsity sweep: {_head(data)} (means over layers, held-out tokens)")
        for c, _ in SWEEP_COLUMNS:
            t.add_column(c, justify="left" if c in ("point", "chosen") else "right")
        for r, p in zip(_sweep_rows(data), data["sweep"]):
            t.add_row(*r, style="bold" if p["chosen"] else None)
        out.print(t)
        out.print(_plot(data), markup=False, highlight=False)
        return
    t = Table(title=f"SAE training: {_head(data)}")
    for c, _ in COLUMNS:
        t.add_column(c, justify="left" if c == "path" else "right")
    for row in data["layers"]:
        t.add_row(*(_fmt(f, row.get(c, "")) for c, f in COLUMNS))
    out.print(t)
