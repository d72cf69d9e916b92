"""`attnscope ioi`: the IOI runner (clean, splice, heads, features, path, noising)."""

from __future__ import annotations

import argparse
import math


from sae.cli.common import UsageError, open_model, job_progress, add_model_flags, add_output_flags, emit, print_tables, tables_markdown
from sae.engine.names import head_name


def register(subparsers) -> None:
    from sae.experiments.ioi_data import EXPERIMENTS, N_PROMPTS

    p = subparsers.add_parser(
        "ioi",
        help="indirect object identification: logit diff, SAE splicing, head/feature/path ablations, noising",
        description="Run one IOI experiment on Wang et al.'s prompts. Experiments: "
        + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()),
    )
    p.add_argument("--experiment", "-e", default="clean", help=f"one of {', '.join(EXPERIMENTS)} (default clean)")
    p.add_argument("--n", type=int, default=N_PROMPTS, help=f"number of prompts, ABBA and BABA alternating (default {N_PROMPTS})")
    p.add_argument("--paper", action="store_true", help="the paper's settings exactly: its IOIDataset('mixed') prompts "
                   "(BABA[:7] + ABBA[:7], its 109 names kept where single tokens, 8 places, 8 objects), no BOS, seed 1 "
                   "unless --seed, and its combined corruption ('It was a nice day. ' prepended, ' while the weather "
                   "was nice' before the first clause's punctuation, C and D drawn independently)")
    p.add_argument("--seed", type=int, default=None, help="prompt seed (default 0; 1 with --paper, the paper's)")
    p.add_argument("--split", default=None, help="all (every one of the 15 templates and name pairs; attnscope's "
                   "default), heldout (templates and name pairs unseen by the embedded default's training), train, or "
                   "mixed (the paper's: 7 BABA + 7 ABBA templates, drawn as its IOIDataset; implied by --paper)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS (models trained without it; implied by --paper, as the paper's prepend_bos=False)")
    p.add_argument("--layer", type=int, default=None, help="SAE layer for features/path (default the middle layer)")
    p.add_argument("--layers", default=None, help="layers to noise, e.g. 1,2 (default the middle layer and the next)")
    p.add_argument("--features", default=None, help="path: feature ids, e.g. 12,40 (default the top 3 by effect)")
    p.add_argument("--heads", default=None, help="path: later heads, e.g. L2H0,L2H3 (or 2.0,2.3) (default every later head)")
    p.add_argument("--corruptions", default=None, help="noising: comma-separated subset of names,abs_pos,rel_pos,alongside,names_abs,combined (default all, or with --paper the paper's two: combined,alongside; 'combined': new names, a prepended sentence and an inserted clause; its text is attnscope's unless --paper, which uses the paper's exact text and name draw)")
    p.add_argument("--names", default=None, help="comma-separated names to draw from (default attnscope's 60 names, or the paper's 109 with --paper/--split mixed; only single-token ones are used)")
    p.add_argument("--top", type=int, default=10, help="features: how many to list (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (default 32)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated whole numbers, got {text!r}") from None


def _heads(text: str | None) -> list[tuple[int, int]] | None:
    if text is None:
        return None
    import re

    heads = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)\.(\d+))\s*", part, flags=re.IGNORECASE)
        if m is None:
            raise UsageError(f"heads are written L2H3 (or 2.3), as the tables print them; got {part!r}")
        g = [x for x in m.groups() if x is not None]
        heads.append((int(g[0]), int(g[1])))
    return heads


def load_model_or_fail(args: argparse.Namespace):
    return open_model(args.model, args.device, args.dtype)


def run(args: argparse.Namespace) -> int:
    from sae import zoo
    from sae.experiments import ioi
    from sae.experiments import ioi_data

    if args.experiment not in ioi.EXPERIMENTS:
        raise UsageError(f"unknown experiment {args.experiment!r}; choose one of {', '.join(ioi.EXPERIMENTS)}")
    if args.n <= 0:
        raise UsageError(f"--n must be a positive number of prompts, got {args.n}")
    if args.batch_size <= 0 or args.top < 0:
        raise UsageError("--batch-size must be positive and --top not negative")
    split = args.split or ("mixed" if args.paper else "all")
    if split not in ("heldout", "train", "all", "mixed"):
        raise UsageError(f"--split must be all, heldout, train or mixed, got {split!r}")
    if args.paper and split != "mixed":
        raise UsageError(f"--paper uses the paper's mixed split; drop --split {split}")
    setting = "paper" if split == "mixed" else "attnscope"
    seed = args.seed if args.seed is not None else (ioi_data.PAPER_SEED if setting == "paper" else 0)
    layers = _int_list(args.layers, "--layers")
    features = _int_list(args.features, "--features")
    heads = _heads(args.heads)
    corruptions = [c.strip() for c in args.corruptions.split(",")] if args.corruptions else None
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None

    model = load_model_or_fail(args)
    for l in ([args.layer] if args.layer is not None else []) + (layers or []) + [h[0] for h in heads or []]:
        if not 0 <= l < model.n_layers:
            raise UsageError(f"layer {l} is outside the model ({model.name} has layers 0..{model.n_layers - 1})")
    data = ioi.build_dataset(model, args.n, seed=seed, split=split, names=names,
                             bos=not (args.no_bos or args.paper), setting=setting)
    saes = None
    if args.experiment in ioi.NEEDS_SAES:
        saes = zoo.load_sae_set(args.saes, model=model, device=model.device)
        for sae in saes.values():
            sae.eval()
    with job_progress(f"ioi {args.experiment}", enabled=not args.json) as on_progress:
        if args.experiment == "noising":
            result = ioi.run_noising(
                model, data, layers,
                corruptions or (ioi_data.PAPER_CORRUPTIONS if args.paper else tuple(ioi_data.CORRUPTIONS)),
                batch_size=args.batch_size,
                on_progress=on_progress,
            )
        else:
            result = ioi.run_experiment(
                args.experiment, model, data, saes, layer=args.layer, layers=layers, features=features,
                heads=heads, top=args.top, batch_size=args.batch_size, on_progress=on_progress,
            )
    emit(args, result.to_dict(), to_markdown, pretty)
    return 0


# ---- faces ---------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def tables(r: dict) -> tuple[str, list[tuple[str, list[str], list[list[str]]]]]:
    """A one-line summary and `(title, columns, rows)` tables: shared by markdown and rich output."""
    head = (
        f"{r['model']}: IOI {r['experiment']} on {r['n_prompts']} prompts (setting {r['setting']}: split {r['split']}, "
        f"seed {r['seed']}, {'BOS' if r['bos'] else 'no BOS'}, {r['n_names']} {r['names']} names); "
        f"clean logit diff {_f(r['clean_logit_diff'])}"
    )
    exp = r["experiment"]
    if exp == "clean":
        head += f", accuracy {_pct(r['accuracy'])}"
        rows = [[o["order"], _f(o["logit_diff"]), _pct(o["accuracy"])] for o in r["by_order"]]
        return head, [("by template order", ["order", "logit diff", "accuracy (IO > S)"], rows)]
    if exp == "splice":
        rows = [[s["layers"], "yes" if s["error_term"] else "no", _f(s["logit_diff"]), _pct(s["recovered"]), f"{s['max_abs_change']:.2e}"]
                for s in r["splices"]]
        return head, [("SAEs spliced into hook_z", ["layers", "error term", "logit diff", "recovered", "max |change|"], rows)]
    if exp == "heads":
        rows = [[head_name(h["layer"], h["head"]), _f(h["zero_delta"]), _f(h["mean_delta"])] for h in r["heads"]]
        return head, [(f"heads {r['ranking']}", ["head", "zero-ablation change", "mean-ablation change"], rows)]
    if exp == "features":
        e = r["error_term"]
        head += (
            f"; layer {r['layer']} at S2: {r['n_live']} live of {r['d_sae']} features; "
            f"error term's own effect {_f(e['delta'])} (ABBA {_f(e['delta_abba'])}, BABA {_f(e['delta_baba'])}); "
            + "; ".join(f"top {o}: {', '.join(map(str, ids))}" for o, ids in r["top_by_order"].items())
        )
        rows = [[str(x["feature"]), str(x["n_active"]), _f(x["mean_act"]), _f(x["delta"]), _f(x["delta_abba"]), _f(x["delta_baba"])]
                for x in r["features"]]
        return head, [(f"features {r['ranking']}", ["feature", "active on", "mean act", "change", "ABBA", "BABA"], rows)]
    if exp == "path":
        head += f"; layer {r['layer']} features {', '.join(map(str, r['features']))} ({r['features_picked']})"
        rows = [[str(x["feature"]), x["heads"], str(x["n_active"]), _f(x["delta"]), _f(x["delta_abba"]), _f(x["delta_baba"])]
                for x in r["paths"]]
        return head, [("feature direction removed from value input at S2", ["feature", "heads", "active on", "change", "ABBA", "BABA"], rows)]
    # noising
    rows = [[x["corruption"], x["layers"], _f(x["logit_diff"]), _pct(x["recovered"])] for x in r["results"]]
    rows += [[s["corruption"], "-", "skipped", s["reason"]] for s in r["skipped"]]
    refs = [[x["reference"], _f(x["logit_diff"]), x["skipped"] or _pct(x["fraction"])] for x in r["references"]]
    legend = [[k, v] for k, v in r["corruptions"].items()]
    return head, [
        (f"attention output at S2 patched from corrupted prompts ({r['recovered_is']})", ["corruption", "layers", "logit diff", "fraction of clean"], rows),
        (f"reference logit differences ({r['references_are']})", ["reference", "logit diff", "fraction of clean"], refs),
        ("corruptions", ["name", "what changes"], legend),
    ]


def to_markdown(r: dict) -> str:
    return tables_markdown(*tables(r))


def pretty(r: dict) -> None:
    print_tables(*tables(r))
