"""`attnscope eval`: standard SAE metrics (L0, explained variance, CE loss recovered, KL, dead/dense)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae.cli.common import UsageError, open_model, add_output_flags, console, emit, out, positive_int, job_progress


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate SAEs: L0, explained variance, CE loss recovered, KL, dead/dense features",
        description="Evaluate SAEs on held-out text through the model: reconstruction (L0, explained variance, "
        "NMSE), CE loss clean / with the reconstruction spliced into hook_z / with hook_z zero-ablated, CE loss "
        "recovered, KL, dead and dense feature fractions. Definitions are SAELens run_evals'. BOS rule: positions "
        "holding a special token (BOS, EOS, PAD) are neither spliced nor counted, as SAELens's "
        "exclude_special_tokens=True (training and dashboards leave BOS out too); --include-bos counts every "
        "position.",
    )
    p.add_argument("saes", nargs="*", metavar="SAE_DIR",
                   help="SAE directories/files, dirs of them, or release ids (default: --saes)")
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--saes", dest="saes_flag", default="default", help="used when no SAE_DIR is given (default: embedded)")
    p.add_argument("--corpus", default="default", help="'default' (embedded held-out split) or a .txt file / dir")
    p.add_argument("--tokens", type=positive_int, default=65_536, help="tokens to evaluate on (default 65536)")
    p.add_argument("--context-size", type=positive_int, default=None, help="row length (default: the SAE's, capped by the model)")
    p.add_argument("--batch-rows", type=positive_int, default=8, help="rows per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--include-bos", "--paper", dest="include_bos", action="store_true",
                   help="count special-token positions (BOS/EOS/PAD) too, as the paper's CE loss recovered does "
                   "(--paper is the same flag); default: leave them out, as SAELens does")
    p.add_argument("--no-cache", dest="no_cache", action="store_true",
                   help="evaluate again even when the same model, SAE contents, tokens and settings were evaluated "
                   "before (the new results replace the cached ones)")
    p.add_argument("--write", action="store_true", help="store the metrics in each SAELens dir's cfg.json and sparsity file")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.engine.activations import corpus_token_rows
    from sae.engine.formats import save_sae
    from sae.analysis.cache import evaluate
    from sae.zoo import corpus_texts, load_sae_set

    model = open_model(args.model, args.device)
    specs = args.saes or [args.saes_flag]
    saes: dict = {}
    for spec in specs:
        for layer, sae in load_sae_set(spec, model=model, device=model.device, dtype=model.dtype).items():
            if layer in saes:
                raise UsageError(f"two SAEs given for layer {layer}; evaluate them in separate runs")
            saes[layer] = sae
    if args.write:  # refuse now, before the evaluation: the shipped SAEs, files, unwritable places
        from sae.engine.formats import check_sae_write_target
        from sae.engine.safe_io import check_writable_dir

        for sae in saes.values():
            path = sae.cfg.extra.get("path")
            if path and sae.cfg.extra.get("source_format") is None:
                check_sae_write_target(path)
                check_writable_dir(Path(path).parent, "--write target folder")
    ctx = args.context_size or min(sae.cfg.context_size for sae in saes.values())
    ctx = min(ctx, model.n_ctx)
    n_rows = max(1, args.tokens // ctx)
    rows = corpus_token_rows(model, corpus_texts(args.corpus, "heldout"), ctx, max_rows=n_rows)
    with job_progress("eval", transient=False) as on_progress:  # results are cached by model, SAE contents, rows
        outcome = evaluate(model, saes, rows, batch_rows=args.batch_rows, on_progress=on_progress,
                           exclude_special_tokens=not args.include_bos, refresh=args.no_cache)
    results = outcome.results
    if args.write:
        for r in results:
            sae = saes[r.layer]
            path = sae.cfg.extra.get("path")
            if path and sae.cfg.extra.get("source_format") is None:
                sae.cfg.extra["eval"] = {k: v for k, v in r.to_dict().items() if k not in ("path",)}
                save_sae(sae, path, r.log10_density)
            else:
                console.print(f"not writing metrics into {path}: not a SAELens directory", markup=False)
    emit(args, [{**r.to_dict(), "cached": outcome.from_cache} for r in results], _markdown, _pretty)
    return 0


CACHED_NOTE = ("(cached: the same model, SAE contents, tokens and settings were evaluated before; --no-cache "
               "evaluates again)")

COLUMNS = [
    ("layer", "{}"), ("d_sae", "{}"), ("l0", "{:.1f}"), ("explained_variance", "{:.3f}"), ("nmse", "{:.3f}"),
    ("ce_clean", "{:.3f}"), ("ce_sae", "{:.3f}"), ("ce_zero_abl", "{:.3f}"), ("ce_loss_recovered", "{:.3f}"),
    ("kl", "{:.4f}"), ("kl_score", "{:.3f}"), ("dead_fraction", "{:.3f}"), ("dense_fraction", "{:.3f}"), ("tokens", "{:,}"),
]


def _fmt(fmt: str, v: Any) -> str:
    if v is None:
        return "n/a"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(f, r[c]) for c, f in COLUMNS) + " |")
    if rows:
        lines += ["", f"BOS rule: {rows[0]['bos_rule']}."]
        if rows[0].get("cached"):
            lines += ["", CACHED_NOTE]
    return "\n".join(lines)


def _pretty(rows: list[dict]) -> None:
    from sae.cli.common import FitTable as Table

    t = Table(title="SAE evaluation")
    for c, _ in COLUMNS:
        t.add_column(c.replace("_", " "), justify="right")
    for r in rows:
        t.add_row(*(_fmt(f, r[c]) for c, f in COLUMNS))
    out.print(t)
    if rows:
        out.print(f"BOS rule: {rows[0]['bos_rule']}.")
        if rows[0].get("cached"):
            out.print(CACHED_NOTE)
