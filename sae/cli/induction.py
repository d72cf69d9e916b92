"""`attnscope induction`: long- vs short-prefix induction heads, on repeated random tokens and on held-out text."""

from __future__ import annotations

import argparse


from sae.engine.errors import AttnscopeError
from sae.cli.common import UsageError, add_model_flags, add_output_flags, emit, print_tables, tables_markdown
from sae.cli.common import job_progress
from sae.cli.ioi import load_model_or_fail
from sae.engine.names import head_name


def register(subparsers) -> None:
    from sae.experiments.induction import MATCHINGS, N_SEQUENCES, SAMPLINGS, classification_rule

    p = subparsers.add_parser(
        "induction",
        help="long- vs short-prefix induction heads: scores and DLA by repeated-prefix length",
        description="Per head and repeated-prefix length, the induction score (attention from the last repeated "
        "token to the token after its earlier occurrence) and the head's direct logit attribution to that token. "
        "The repeated prefix sits at a random (seeded) position; DLA is vocabulary-centred (the target's logit minus "
        "the mean logit over the vocabulary). "
        "With --real-text, also matched prefix lengths of strong attention on held-out text and the src-2 test. "
        f"Rule: {classification_rule()} (--threshold changes the first number).",
    )
    p.add_argument("--n", type=int, default=N_SEQUENCES, help=f"sequences per prefix length (default {N_SEQUENCES}, as in the paper)")
    p.add_argument("--max-prefix", type=int, default=9, help="prefix lengths 1..MAX (default 9)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128, capped at the context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None, help="score over the longest prefixes that makes an induction head (default 0.15)")
    p.add_argument("--real-text", action="store_true", help="also run the held-out-text study")
    p.add_argument("--sampling", choices=list(SAMPLINGS), default=None,
                   help="synthetic sequences: " + "; ".join(f"{k}: {v}" for k, v in SAMPLINGS.items())
                   + " (default attnscope; paper with --paper)")
    p.add_argument("--matching", choices=list(MATCHINGS), default=None,
                   help="--real-text events: " + "; ".join(f"{k}: {v}" for k, v in MATCHINGS.items())
                   + " (default every-exact; first-fuzzy with --paper)")
    p.add_argument("--paper", action="store_true", help="the paper's choices: --sampling paper --matching first-fuzzy")
    p.add_argument("--corpus", default="default", help="text for --real-text: a file or directory (default: the held-out split of the embedded corpus)")
    p.add_argument("--rows", type=int, default=16, help="--real-text: rows of text (default 16)")
    add_model_flags(p, saes=False)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.experiments import induction

    if args.n <= 0:
        raise UsageError(f"--n must be a positive number of sequences, got {args.n}")
    if not 1 <= args.max_prefix or args.seq_len < 2 * args.max_prefix + 4:
        raise UsageError(f"--max-prefix {args.max_prefix} needs --seq-len of at least {2 * args.max_prefix + 4} and must be >= 1")
    if args.batch_size <= 0 or args.rows <= 0:
        raise UsageError("--batch-size and --rows must be positive")
    threshold = induction.INDUCTION_THRESHOLD if args.threshold is None else args.threshold
    if not 0 < threshold <= 1:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    model = load_model_or_fail(args)
    if min(args.seq_len, model.n_ctx) < 2 * args.max_prefix + 4:
        raise UsageError(f"{model.name}'s context ({model.n_ctx}) is too short for prefixes up to {args.max_prefix}")
    texts = None
    if args.real_text:
        texts, source = heldout_texts(args.corpus)
    try:
        with job_progress("induction (synthetic)", enabled=not args.json) as on_progress:
            syn = induction.synthetic_induction(
                model, n=args.n, prefix_lengths=range(1, args.max_prefix + 1), seq_len=args.seq_len, seed=args.seed,
                batch_size=args.batch_size, threshold=threshold, on_progress=on_progress,
                sampling=args.sampling or ("paper" if args.paper else "attnscope"),
            )
        result = syn.to_dict()
        if texts is not None:
            with job_progress("induction (real text)", enabled=not args.json) as on_progress:
                real = induction.real_text_induction(
                    model, texts, n_rows=args.rows, seq_len=args.seq_len, seed=args.seed, source=source,
                    matching=args.matching or ("first-fuzzy" if args.paper else "every-exact"), on_progress=on_progress,
                )
            result["real_text"] = real.to_dict()
    except AttnscopeError:
        raise
    except ValueError as exc:  # the experiment's own checks on its settings (prefix lengths, text length)
        raise UsageError(str(exc)) from exc
    emit(args, result, to_markdown, pretty)
    return 0


def heldout_texts(spec: str) -> tuple[list[str], str]:
    from sae.zoo import corpus_texts, is_default

    texts = corpus_texts(spec, "heldout", synthetic=False)
    return texts, "held-out split of the embedded corpus" if is_default(spec) else spec


# ---- faces ---------------------------------------------------------------------------------------------


def tables(r: dict) -> tuple[str, list[tuple[str, list[str], list[list[str]]]]]:
    lengths = [str(p) for p in r["prefix_lengths"]]
    found = [h for h in r["heads"] if h["kind"] != "not induction"]
    names = ", ".join(f"{head_name(h['layer'], h['head'])} ({h['kind']})" for h in found) or "none"
    head = (
        f"{r['model']}: {r['n_per_length']} sequences of {r['seq_len']} tokens per prefix length, sampling "
        f"{r['sampling']} ({r['design']}; seed {r['seed']}, mean query position {r['mean_query_pos']:.1f}); "
        f"induction heads: {names}. Rule: {r['rule']}"
    )
    rows = []
    for h in r["heads"]:
        rows.append([head_name(h["layer"], h["head"]), h["kind"]] + [f"{h['scores'][k]:.2f}" for k in lengths]
                    + [f"{h['dla'][lengths[0]]:.2f}", f"{h['dla'][lengths[-1]]:.2f}"])
    cols = ["head", "kind"] + [f"s{k}" for k in lengths] + [f"dla{lengths[0]}", f"dla{lengths[-1]}"]
    tbls = [("induction score by repeated-prefix length (s1..), vocabulary-centred DLA to the correct token", cols, rows)]
    if "real_text" in r:
        rt = r["real_text"]
        rrows = []
        for h in rt["heads"]:
            hist = h["prefix_hist"]
            rrows.append([
                head_name(h["layer"], h["head"]), str(h["n_events"]), str(h["n_induction"]),
                "/".join(str(v) for v in hist.values()), f"{h['mean_prefix']:.2f}", str(h["n_intervened"]),
                f"{h['attn_before']:.2f}", f"{h['attn_after']:.2f}",
            ])
        tbls.append((
            f"real text ({rt['source']}, {rt['n_rows']} rows): attention > {rt['threshold']} to a non-BOS token, "
            f"matching {rt['matching']}; src-2 replaced by a random token",
            ["head", "events", "induction", "prefix 0/1/2/3/4+", "mean", "replaced", "before", "after"],
            rrows,
        ))
    return head, tbls


def to_markdown(r: dict) -> str:
    return tables_markdown(*tables(r))


def pretty(r: dict) -> None:
    print_tables(*tables(r), bold_row=lambda row: row[1] in ("long-prefix", "short-prefix"))
