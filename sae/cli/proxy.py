"""`attnscope proxy --layer L --feature F --rule 'induction: board'`: a feature against a proxy on held-out text."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import (
    UsageError, add_model_flags, add_output_flags, emit, job_progress, positive_int, print_tables, tables_markdown,
)
from sae.cli.features import check_feature, non_negative_int, open_model_and_saes


def register(subparsers: Any) -> None:
    from sae.analysis.proxy import PROXY_KINDS

    p = subparsers.add_parser(
        "proxy",
        help="specificity / sensitivity of a feature against a proxy rule (histograms, expected values, examples)",
        description="Compare a feature's activations on held-out text with a proxy that says where it should fire, "
        "as the paper's induction-feature deep dive: the activation histogram of its firings split by proxy true / "
        "false, the expected-value plot (bin centre x count / the category's firings), specificity (share of "
        "firings where the proxy holds) and sensitivity (share of proxy-true tokens where it fires), with the "
        "strongest false positives and some false negatives. Proxies: "
        + "; ".join(f"{k}:ARG: {v}" for k, v in PROXY_KINDS.items()),
    )
    p.add_argument("--layer", type=non_negative_int, required=True, help="layer of the feature")
    p.add_argument("--feature", type=non_negative_int, required=True, help="feature id in that layer's SAE")
    p.add_argument("--rule", required=True, help="the proxy, KIND:ARG, e.g. 'induction: board', 'token: the', "
                   "'regex:\\d+$'")
    p.add_argument("--corpus", default="default", help="text: a file or directory (default: the embedded held-out split)")
    p.add_argument("--rows", type=positive_int, default=64, help="rows of text (default 64)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per row (default 128, capped at the context)")
    p.add_argument("--bins", type=positive_int, default=20, help="histogram bins (default 20)")
    p.add_argument("--examples", type=non_negative_int, default=5, help="false positives and negatives shown (default 5)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.proxy import parse_proxy, proxy_study
    from sae.cli.induction import heldout_texts
    from sae.engine.activations import pack_tokens

    model, saes = open_model_and_saes(args, args.layer)
    check_feature(saes[args.layer], args.layer, args.feature)
    proxy = parse_proxy(args.rule, model.encode)
    texts, source = heldout_texts(args.corpus)
    seq = min(args.seq_len, model.n_ctx)
    rows = pack_tokens(texts, model.encode, seq, model.bos_token_id, max_rows=args.rows)
    if len(rows) == 0:
        raise UsageError(f"the text is shorter than one row of {seq} tokens")
    with job_progress("proxy", enabled=not args.json) as on_progress:
        r = proxy_study(model, saes[args.layer], args.layer, args.feature, proxy, rows, bins=args.bins,
                        n_examples=args.examples, source=source, on_progress=on_progress)
    emit(args, r.to_dict(), lambda d: tables_markdown(*tables(d)), lambda d: print_tables(*tables(d)))
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _context(e: dict) -> str:
    toks = [repr(t)[1:-1] for t in e["tokens"]]
    toks[e["active"]] = f"[[{toks[e['active']]}]]"
    return "".join(toks)


def tables(d: dict) -> tuple[str, list[tuple[str, list[str], list[list[str]]]]]:
    head = (
        f"{d['model']}: layer {d['layer']} feature {d['feature']} against proxy {d['proxy']} ({d['rule']}) on "
        f"{d['n_tokens']:,} tokens of {d['source']}: fires on {d['n_fires']:,}, proxy holds on {d['n_proxy']:,}; "
        f"specificity {_pct(d['specificity'])} ({d['true_positives']} of {d['n_fires']} firings), sensitivity "
        f"{_pct(d['sensitivity'])} ({d['true_positives']} of {d['n_proxy']}); false positives {d['false_positives']}, "
        f"false negatives {d['false_negatives']}"
    )
    edges = d["edges"]
    hist = [[f"{edges[i]:.3g}-{edges[i + 1]:.3g}", str(d["counts_true"][i]), str(d["counts_false"][i]),
             f"{d['expected_true'][i]:.4f}", f"{d['expected_false'][i]:.4f}"] for i in range(len(edges) - 1)]
    fps = [[f"{e['act']:.3f}", f"{e['row']}:{e['pos']}", _context(e)] for e in d["false_positive_examples"]]
    fns = [[f"{e['act']:.3f}", f"{e['row']}:{e['pos']}", _context(e)] for e in d["false_negative_examples"]]
    return head, [
        ("activations where the feature fires, by proxy (expected value: bin centre x count / the category's firings)",
         ["activation", "proxy true", "proxy false", "EV true", "EV false"], hist),
        ("false positives (strongest firings where the proxy does not hold)", ["act", "row:pos", "context"], fps),
        ("false negatives (the proxy holds, the feature is silent)", ["act", "row:pos", "context"], fns),
    ]
