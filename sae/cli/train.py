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

from sae.cli.common import UsageError, add_output_flags, console, emit, job_progress, open_model, open_training_model, out
from sae.engine.safe_text import markup_escape

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
    """The run's `TrainConfig`: preset, then the flags given (a bad value is the config's one-line TrainingError)."""
    from sae.engine.training.config import PRESETS, TrainConfig, option_fields

    values: dict[str, Any] = dict(PRESETS[args.preset]) if getattr(args, "preset", None) else {}
    for f in option_fields():
        v = getattr(args, f.name, None)
        if v is not None and v is not False:
            values[f.name] = v
            # an explicit flag overrides the preset, its per-layer table included (`--preset paper --l1 0.5`
            # trains every layer at 0.5, `--width 4096` every layer 4096 wide)
            values.pop({"l1_coeff": "layer_l1", "d_sae": "layer_d_sae"}.get(f.name, ""), None)
    if args.dtype in ("bfloat16", "bf16"):
        values["autocast"] = True
    values["layers"] = parse_layers(values.get("layers", "all"), n_layers)
    values.setdefault("context_size", min(128, n_ctx))
    values["model_name"] = model_name
    values["corpus"] = args.corpus
    values["activations"] = args.activations or ""
    cfg = TrainConfig(**values)
    cfg.check_widths(d_in)  # `--k 2000` on a 1024-wide SAE: one line now, not a torch error mid-run
    return cfg


def resumed_config(args: argparse.Namespace, out_dir: Path):
    """The saved config of the run in `out_dir` with the few settings a resume may change (`--tokens`,
    `--prefetch`, `--checkpoint-every`), validated once by `TrainConfig`."""

    from sae.engine.errors import AttnscopeError
    from sae.engine.schema import check, read_json
    from sae.engine.training.checkpoint import CONFIG_FILE
    from sae.engine.training.config import TrainConfig, config_spec

    path = out_dir / CONFIG_FILE
    try:
        saved = read_json(path, "training config")  # a FIFO, NaN, deep nesting: one line
    except FileNotFoundError:
        raise UsageError(f"--resume: {out_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--resume: {path} is damaged (not a JSON object)")
    check(saved, config_spec(), path)  # a wrong type is one line naming its field
    changes = {name: getattr(args, name) for name in ("total_tokens", "prefetch", "checkpoint_every")
               if getattr(args, name, None) is not None}
    refuse_changed_settings(args, saved, path)
    try:
        return TrainConfig.from_dict({**saved, **changes})
    except (TypeError, ValueError, KeyError) as exc:  # a field missing, or values that do not fit together
        if isinstance(exc, AttnscopeError):
            raise
        raise UsageError(f"--resume: {path} is damaged ({str(exc)[:120]})") from None


def refuse_changed_settings(args: argparse.Namespace, saved: dict[str, Any], path: Path) -> None:
    """`--resume` continues the saved run: a flag that would change anything but its length, prefetch or
    checkpoint interval (`--lr`, a sweep list, `--preset`) is refused with one line naming it, never ignored."""
    from sae.engine.training.config import TrainConfig, option_fields

    allowed = set(TrainConfig.RESUMABLE_CHANGES)
    differ = []
    for f in option_fields():
        v = getattr(args, f.name, None)
        if v is None or v is False or f.name in allowed or f.name == "layers" and v == "all":
            continue
        old = saved.get(f.name)
        same = v == old or (isinstance(old, list) and isinstance(v, list) and [float(x) for x in old] == [
            float(x) for x in v]) or (isinstance(v, (int, float)) and isinstance(old, (int, float)) and float(v) == float(old))
        if f.name == "layers" and isinstance(old, list):
            same = str(v).replace(" ", "") == ",".join(str(x) for x in old)
        if not same:
            differ.append(f"{flag_of(f)} {_show_value(v)} (the run has {_show_value(old)})")
    if getattr(args, "preset", None):
        differ.append(f"--preset {args.preset}")
    if differ:
        raise UsageError(f"--resume continues the run in {path.parent} with its own settings; it cannot change "
                         f"{'; '.join(differ)}. Start a new --out to train with them")


def _show_value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from sae.engine.training.distributed import init_from_env, launched_by_torchrun, shutdown

    if args.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
        raise UsageError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")

    if args.nproc != 1 and not launched_by_torchrun():
        return launch(args)
    sync = None
    if launched_by_torchrun():  # one rank of a data-parallel run: only rank 0 prints and writes files
        sync, dist_device = init_from_env(args.device)
        args.device = str(dist_device)
        if not sync.is_main:
            console.quiet = out.quiet = True
    try:
        return _run(args, sync)
    finally:
        if sync is not None:
            shutdown()


def launch(args: argparse.Namespace) -> int:
    """`attnscope train --nproc N ...`: check the split, then run this command without --nproc in N processes
    under torchrun (`sae.engine.training.distributed.launch_torchrun`)."""
    import sys

    from sae.engine.training.config import PRESETS, field_default
    from sae.engine.training.distributed import check_launch, check_split, launch_torchrun, strip_nproc

    n = args.nproc
    check_launch(n, args.device)
    if args.resume:
        cfg = resumed_config(args, Path(args.out).expanduser())
        check_split(cfg.batch_size, cfg.data_shards or n, n)
    else:
        preset = PRESETS.get(args.preset or "", {})
        batch = args.batch_size or preset.get("batch_size") or field_default("batch_size")
        check_split(batch, args.data_shards or n, n)
    argv = strip_nproc(getattr(args, "argv", None) or sys.argv[1:])
    return launch_torchrun(n, args.device, ["-m", "workbench.main", *argv], announce=lambda line: console.print(line, markup=False))


def existing_saes(out_dir: Path) -> list[Path]:
    """SAE directories (cfg.json beside weights) directly under `out_dir`."""
    from sae.engine.formats import CFG_FILE, WEIGHTS_FILE

    if not out_dir.is_dir():
        return []
    return sorted(d for d in out_dir.iterdir() if (d / CFG_FILE).is_file() and (d / WEIGHTS_FILE).is_file())


def run_entries(out_dir: Path) -> tuple[bool, list[str]]:
    """(whether `out_dir` holds an attnscope training run, the names in it that are not attnscope's). A run is a
    `train_config.json`, a checkpoint or SAE directories (a sweep's in their point folders); attnscope's lock and
    temporaries are its own; anything else is the user's."""
    from sae.engine.safe_io import LOCK_FILE, is_own_temp
    from sae.engine.training.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, LANES_DIR

    try:
        entries = sorted(p.name for p in out_dir.iterdir())
    except OSError:
        return False, []
    ours = {CHECKPOINT_FILE, CONFIG_FILE, LANES_DIR, LOCK_FILE}
    is_run = CONFIG_FILE in entries or CHECKPOINT_FILE in entries or bool(existing_saes(out_dir))
    foreign = [n for n in entries if n not in ours and not is_own_temp(n) and not n.startswith(".probe-")]
    return is_run, foreign


def refuse_foreign_dir(out_dir: Path) -> None:
    """A fresh run goes into a new or empty directory or replaces a run of attnscope's own: a directory holding
    anything else (a home directory, a folder of the user's files, an SAE folder holding only a README) is refused
    with one line, with or without --overwrite, before anything is written in it."""
    if not out_dir.is_dir() or out_dir.is_symlink() and not out_dir.exists():
        return
    is_run, foreign = run_entries(out_dir)
    if foreign and not is_run:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"--out {out_dir} already holds files that are not an attnscope training run ({shown}); "
                         "pick a new or empty directory")


def _run(args: argparse.Namespace, sync) -> int:
    from sae.engine.safe_io import check_writable_dir
    from sae.engine.training.loop import lock_output_dir

    if not str(args.out).strip():
        raise UsageError("--out is empty; name the run's directory")
    out_dir = Path(args.out).expanduser()
    lock = None
    if sync is None or sync.is_main:  # one writer per --out: rank 0 holds the lock for the whole run
        if args.resume:
            from sae.engine.training.checkpoint import CONFIG_FILE

            if not (out_dir / CONFIG_FILE).is_file():  # nothing is created in a directory that holds no run
                raise UsageError(f"--resume: {out_dir} holds no {CONFIG_FILE}; nothing to resume")
        else:
            refuse_foreign_dir(out_dir)  # the user's own files: refused before anything is written there
        check_writable_dir(out_dir, "--out")  # a file, a read-only place: one line now, not after the model loads
        lock = lock_output_dir(out_dir)  # a second `attnscope train` into the same --out is refused here
    try:
        return _run_locked(args, sync, out_dir, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args: argparse.Namespace, sync, out_dir: Path, lock) -> int:
    """Open the data, build the trainer, train under a progress bar, print the report."""
    cfg = resumed_config(args, out_dir) if args.resume else None
    _check_out_dir(args, out_dir, cfg)
    cfg, model, rows, source = _open_data(args, cfg)
    trainer = _make_trainer(args, cfg, out_dir, model, rows, source, sync, lock)
    _announce(args, trainer, rows, sync)
    outcome = _train(trainer)
    data = _report_data(trainer, outcome, out_dir)
    if cfg.is_sweep and outcome.status == "finished" and (sync is None or sync.is_main):
        data["sweep"] = [p.to_dict() for p in _score_sweep(args, cfg, outcome, model)]
    if sync is None or sync.is_main:  # one report per run, not one per process
        emit(args, data, _markdown, _pretty)
    if outcome.status == "cancelled":
        console.print(f"stopped at step {outcome.step}; checkpoint written. Continue with: attnscope train --out {out_dir} --resume",
                      markup=False)
        return 130
    return 0


def _check_out_dir(args: argparse.Namespace, out_dir: Path, resumed) -> None:
    """A resume matches its model; a fresh run does not replace a run or SAEs already in `out_dir` unasked."""
    from sae.engine.training.checkpoint import CHECKPOINT_FILE

    if resumed is not None:
        if args.model != "default" and args.model != resumed.model_name:
            raise UsageError(f"--resume: the run was made with --model {resumed.model_name}, not {args.model}")
        if resumed.activations:
            args.activations = resumed.activations
        return
    if (out_dir / CHECKPOINT_FILE).exists() and not args.overwrite:
        raise UsageError(f"{out_dir} already holds a training run; pass --resume to continue it, --overwrite to "
                         "start again, or pick another --out")
    found = existing_saes(out_dir)
    if found and not args.overwrite:
        raise UsageError(
            f"{out_dir} already holds {len(found)} SAE(s) ({found[0].name}, ...); pass --overwrite to replace "
            "them or pick another --out"
        )


def _open_data(args: argparse.Namespace, cfg):
    """`(cfg, model, rows, source)`: an activation cache (no model) or the model and its training rows; `cfg` is
    the resumed config or built from the flags here (the model or cache gives its shape)."""
    if args.activations:
        from sae.engine.activation_cache import CacheSource, read_manifest

        manifest = read_manifest(args.activations)
        if cfg is None:
            if args.layers is None:
                args.layers = ",".join(str(x) for x in manifest.layers)
            cfg = build_config(args, manifest.d_in, max(manifest.layers) + 1, manifest.context_size, manifest.model)
        source = CacheSource(args.activations, cfg.layers, cfg.rows_per_pass, cfg.seed)
        if cfg.context_size != manifest.context_size:
            raise UsageError(f"the cache holds rows of {manifest.context_size} tokens, the run asks for {cfg.context_size}")
        return cfg, None, None, source
    from sae.zoo.token_cache import cached_token_rows

    model = open_training_model(cfg.model_name if cfg is not None else args.model, args.device)
    if cfg is None:
        cfg = build_config(args, model.d_z, model.n_layers, model.n_ctx, args.model)
    rows = cached_token_rows(model, cfg.corpus or "default", cfg.context_size, split="train")
    return cfg, model, rows, None


def _make_trainer(args: argparse.Namespace, cfg, out_dir: Path, model, rows, source, sync, lock):
    """The `Trainer` (restored from its checkpoint on --resume), holding the lock already taken on `out_dir`."""
    import torch

    from sae.engine.training.loop import Trainer

    device = None
    if model is None:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    trainer = Trainer(model, rows, cfg, out_dir, source=source, device=device, sync=sync)
    trainer.out_lock = lock
    if args.resume:
        trainer.resume()
    return trainer


def _announce(args: argparse.Namespace, trainer, rows, sync) -> None:
    """What is about to be trained, the schedule chosen and its warnings."""
    cfg = trainer.cfg
    sweep = f" sweep {cfg.sparsity_param} = {', '.join(f'{v:g}' for v in cfg.sweep_values)}," if cfg.is_sweep else ""
    where = f"cache {args.activations}" if rows is None else f"{rows.shape[0]:,} corpus rows"
    console.print(
        f"training {len(trainer.units)} SAE(s) on {cfg.model_name} layers {cfg.layers}: {cfg.architecture},{sweep} "
        f"{trainer.d_in} -> {cfg.width(cfg.layers[0], trainer.d_in)}, {cfg.total_steps:,} steps of "
        f"{cfg.batch_size:,} tokens ({where}){' (resumed at step ' + str(trainer.step) + ')' if args.resume else ''}",
        markup=False,
    )
    if sync is not None:
        console.print(f"data parallel: {sync.world_size} processes, {cfg.batch_size // sync.world_size:,} tokens each "
                      f"per step, {cfg.data_shards} data shards")
    console.print(trainer.schedule.describe(cfg.arch.resamples))
    for warning in trainer.schedule.warnings():
        console.print(f"[yellow]warning:[/] {markup_escape(warning)}")


def _step_note(p) -> str:
    """The bar's trailing text: the step and the first SAE's latest figures."""
    m = p.metrics
    nan = float("nan")
    return (f"{p.stage} loss {m.get('loss', nan):.3g} L0 {m.get('l0', nan):.1f} "
            f"EV {m.get('explained_variance', nan):.3f} dead {m.get('dead_fraction', nan):.2f}")


def _train(trainer):
    """Run the trainer under a progress bar; Ctrl-C or SIGTERM stops it with a checkpoint written."""
    import torch

    from sae.engine.training.loop import stop_on_signals

    with job_progress("train", transient=False, describe=_step_note) as on_progress:
        trainer.on_progress = on_progress
        with stop_on_signals(trainer.cancel), torch.inference_mode(False):
            return trainer.run()


def _report_data(trainer, outcome, out_dir: Path) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": outcome.total_steps,
        "tokens": outcome.tokens,
        "tokens_per_s": outcome.tokens_per_s,
        "seconds": outcome.seconds,
        "loop_cpu_seconds": outcome.cpu_seconds,
        "checkpoint": str(outcome.checkpoint),
        "schedule": trainer.schedule.to_dict(),
        "layers": [
            {"layer": layer, "hook": f"blocks.{layer}.attn.hook_z", "path": str(out_dir / f"blocks.{layer}.attn.hook_z"), **m}
            for layer, m in outcome.metrics.items()
        ] if not trainer.cfg.is_sweep else [],
    }


def _score_sweep(args: argparse.Namespace, cfg, outcome, model) -> list:
    """The sweep's points scored on `--eval-tokens` held-out tokens (`sae.engine.training.sweep.score_sweep`);
    without the model (a cache run whose model will not load) or held-out text, the training figures stand in."""
    from sae.engine.errors import AttnscopeError
    from sae.engine.training.sweep import score_sweep
    from sae.zoo.token_cache import cached_token_rows

    rows = None
    if model is None or getattr(model, "bridge", None) is None:  # a cache run, or the bridge-free training model
        try:
            model = open_model(cfg.model_name, args.device)
        except AttnscopeError:
            model = None
    if model is not None and args.eval_tokens > 0:
        try:
            rows = cached_token_rows(model, cfg.corpus or "default", cfg.context_size, split="heldout",
                                     max_rows=max(1, args.eval_tokens // cfg.context_size))
        except AttnscopeError:
            rows = None
    return score_sweep(cfg, outcome.sweep, outcome.sweep_metrics, model, rows)


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
