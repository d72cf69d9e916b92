"""`attnscope features "PROMPT" --layer L`: each token's top features with DFA by head and by source.

Also holds what the analysis commands share: opening the model and its SAEs with one-line errors, and a
markdown table helper."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sae.engine.safe_text import md_cell, term_line
from sae.engine.errors import AttnscopeError
from sae.cli.common import FitTable as Table

from sae.cli.common import UsageError, open_model, add_model_flags, add_output_flags, emit, out, positive_int
from sae.cli.common import non_negative_int
from sae.engine.names import head_name


# ---- shared by the analysis commands ------------------------------------------------------------------


def open_model_and_saes(args: argparse.Namespace, layer: int | None = None, prompt: str | None = None):
    """(LoadedModel, {layer: SAE}) from --model/--saes/--device/--dtype; UsageError on any failure, including a
    `layer` that has no SAE, or an empty `prompt` (checked first, before anything is loaded)."""
    from sae.zoo import load_sae_set

    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt is empty")

    model = open_model(args.model, args.device, getattr(args, "dtype", "float32"))
    try:
        saes = load_sae_set(args.saes, model=model, device=model.device, dtype=model.dtype)  # --dtype: both
    except AttnscopeError:
        raise
    except (OSError, ValueError) as exc:  # reading the SAE files themselves
        raise UsageError(str(exc)) from exc
    if layer is not None:
        check_layer(model, saes, layer)
    return model, saes


def check_layer(model, saes: dict, layer: int) -> None:
    if not 0 <= layer < model.n_layers:
        raise UsageError(f"layer {layer} is outside the model ({model.name} has layers 0..{model.n_layers - 1})")
    if layer not in saes:
        raise UsageError(f"no SAE for layer {layer}; the SAEs given cover layers {sorted(saes) or 'none'}")


def check_feature(sae, layer: int, feature: int) -> None:
    if not 0 <= feature < sae.cfg.d_sae:
        raise UsageError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")


def warn(message: str) -> None:
    print(f"attnscope: warning: {term_line(message)}", file=sys.stderr)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}"
        return md_cell(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def show_token(t: str) -> str:
    """A token on its own: quoted (Python repr) when it has whitespace at an end or control characters, so ' ',
    '\\n' and '' stay visible."""
    if not t or t.strip() != t or not t.isprintable():
        return repr(t)
    return t


def source_token(tokens: list[str], s: int) -> str:
    """A token in a narrow column: the first token, when special (`<|endoftext|>`), as BOS."""
    t = tokens[s]
    return "BOS" if s == 0 and t.startswith("<|") and t.endswith("|>") else show_token(t)


def context_piece(t: str) -> str:
    """A token inside a running context: newlines and tabs escaped, everything else as is."""
    return t.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


# ---- the command --------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "features",
        help="each token's top SAE features, with DFA by head and by source position",
        description="Run PROMPT once and list each token's top-K active features at --layer with activation, "
        "pre-activation, DFA by head (exact: sum + bias = pre-activation) and DFA by source position.",
    )
    p.add_argument("prompt", help="the text to analyse")
    p.add_argument("--layer", type=non_negative_int, required=True, help="attention layer whose SAE to use")
    p.add_argument("--top", type=positive_int, default=5, help="features per token (default 5)")
    add_model_flags(p)
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.analysis.dfa import prompt_features

    model, saes = open_model_and_saes(args, args.layer, prompt=args.prompt)
    res = prompt_features(model, saes[args.layer], args.prompt, args.top, layer=args.layer)
    if res.truncated:
        warn(f"the prompt is longer than the model's context; analysed its first {model.n_ctx} tokens")
    emit(args, res.to_dict(), markdown, pretty)
    return 0


def _rows(d: dict) -> list[list[Any]]:
    rows = []
    for p in d["positions"]:
        for f in p["features"]:
            heads = f["dfa_heads"]
            h = max(range(len(heads)), key=lambda i: heads[i]) if heads else 0
            src = f["dfa_src"]
            s = max(range(len(src)), key=lambda i: src[i]) if src else 0
            rows.append([p["pos"], source_token(d["tokens"], p["pos"]), f["id"], f["act"], f["pre_act"], head_name(d["layer"], h),
                         f"{heads[h]:+.3f}", f"{s} {source_token(d['tokens'], s)}", f"{src[s]:+.3f}"])
    return rows


# one short header per column: at 80 columns each row stays on one line (the caption says what they are)
HEADERS = ["pos", "token", "feature", "act", "pre-act", "head", "DFA", "source", "DFA"]
CAPTION = "head, source: the largest DFA into the feature"


def markdown(d: dict) -> str:
    head = f"## Features of {d['model']} layer {d['layer']}\n\n"
    note = "(prompt truncated to the model's context)\n\n" if d.get("truncated") else ""
    return head + note + md_table(HEADERS, _rows(d)) + f"\n\n{CAPTION}"


def pretty(d: dict) -> None:
    t = Table(title=f"{d['model']} · layer {d['layer']} · top features per token", header_style="bold",
              caption=CAPTION)
    if out.width < 100:  # narrow: no vertical rules, so every row stays on one line at 80 columns
        from rich import box

        t.box, t.show_edge, t.pad_edge = box.SIMPLE_HEAD, False, False
    for h in HEADERS:
        t.add_column(h, justify="right" if h in ("pos", "feature", "act", "pre-act", "DFA") else "left", overflow="fold")
    last = None
    for r in _rows(d):
        pos, tok = r[0], r[1]
        first = pos != last
        last = pos
        t.add_row(str(pos) if first else "", tok if first else "", str(r[2]), f"{r[3]:.3f}", f"{r[4]:.3f}",
                  r[5], r[6], r[7], r[8])  # str cells are plain text (FitTable), never markup
    out.print(t)
