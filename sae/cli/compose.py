"""`attnscope compose "PROMPT" --layer L --feature F --resid-sae DIR`: residual-SAE features feeding a feature via W_V."""

from __future__ import annotations

import argparse
from typing import Any

from sae.cli.common import add_model_flags, add_output_flags, emit, print_tables, positive_int, tables_markdown
from sae.cli.common import add_feature_target
from sae.cli.features import check_feature, open_model_and_saes


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compose",
        help="composition with a residual-stream SAE: which residual features feed an attention feature through W_V",
        description="Split an attention-SAE feature's share from one source token (DFA by source, heads summed) "
        "over the features of a residual-stream SAE (SAELens format) on blocks.L.hook_resid_pre of the same layer, "
        "with the attention pattern and ln1's scale frozen: the shares plus the residual SAE's b_dec and error add up "
        "to the source's DFA. Also the paper's get_resid_features score (no attention weight, no LayerNorm).",
    )
    add_feature_target(p, "destination position (default: where the feature is strongest)")
    p.add_argument("--resid-sae", required=True, help="a SAELens directory of a residual SAE on blocks.L.hook_resid_pre")
    p.add_argument("--src", type=int, default=None, help="source position (default: the largest DFA share at --pos)")
    p.add_argument("--top", type=positive_int, default=10, help="residual features listed (default 10)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.composition import resid_composition
    from sae.engine.formats import load_sae

    model, saes = open_model_and_saes(args, args.layer, prompt=args.prompt)
    check_feature(saes[args.layer], args.layer, args.feature)
    resid = load_sae(args.resid_sae, device=model.device)  # SAEFormatError reaches the CLI as one line
    r = resid_composition(model, saes, args.layer, args.feature, resid, args.prompt, args.pos, args.src, args.top)
    emit(args, r.to_dict(), lambda d: tables_markdown(*tables(d)), lambda d: print_tables(*tables(d)))
    return 0


def tables(d: dict) -> tuple[str, list[tuple[str, list[str], list[list[str]]]]]:
    tok = d["tokens"]
    head = (
        f"{d['model']}: layer {d['layer']} feature {d['feature']} at {d['dst']} {tok[d['dst']]!r} (pre-activation "
        f"{d['pre_act']:+.4f}), source {d['src']} {tok[d['src']]!r} (its DFA share {d['source_share']:+.4f}); "
        f"{d['n_active']} residual features active there ({d['resid_hook']}); residual SAE b_dec "
        f"{d['b_dec_share']:+.4f}, error {d['error_share']:+.4f}. {d['note']}"
    )
    rows = [[str(r["feature"]), f"{r['act']:.3f}", f"{r['share']:+.4f}", f"{r['value_score']:+.4f}"] for r in d["top"]]
    return head, [(f"residual features {d['ranking']}", ["resid feature", "act", "share", "value score (paper)"], rows)]
