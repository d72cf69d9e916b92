"""Reading built dashboards: one feature back (numpy slices of the safetensors file plus the JSON index, no model
needed, milliseconds), a directory's summary, and whole-layer arrays for surveys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open

from sae.analysis.dashboards.store import DATA, INDEX, DashboardError, build_command, dashboard_dir, is_built

if TYPE_CHECKING:
    import torch

    from sae.engine.autoencoder import SAE
    from sae.engine.models import LoadedModel

def _round_linspace(start: float, stop: float, num: int) -> list[int]:
    """`num` evenly spaced points from start to stop, rounded half to even (float32, as the builder does)."""
    if num <= 0:
        return []
    if num == 1:
        return [int(np.rint(np.float32(start)))]
    step = np.float32((stop - start) / (num - 1))
    pts = np.float32(start) + step * np.arange(num, dtype=np.float32)
    pts[-1] = np.float32(stop)
    return [int(x) for x in np.rint(pts)]


@dataclass
class Example:
    """A context around one firing: `tokens[center]` is the token where the feature fired with `act`."""

    act: float
    tokens: list[str]
    acts: list[float]  # the feature's activation on each context token
    center: int
    row: int
    pos: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuantileBin:
    lo: float
    hi: float
    share: float  # fraction of the sampled firings in this bin
    examples: list[Example]

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "share": self.share, "examples": [e.to_dict() for e in self.examples]}


@dataclass
class ExampleDFA:
    """DFA by source of one top example: `sum(dfa_src) + dfa_earlier + dfa_bias == pre_act`."""

    example: int  # index into `top`
    pre_act: float
    dfa_bias: float
    dfa_heads: list[float]
    src_tokens: list[str]  # the window's tokens up to and including the active one
    dfa_src: list[float]
    dfa_earlier: float  # sources before the window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureDashboard:
    model: str
    layer: int
    feature: int
    d_sae: int
    n_tokens: int
    density: float  # firings per token (BOS excluded)
    mean_act: float  # mean activation when firing
    max_act: float
    top: list[Example]
    quantiles: list[QuantileBin]
    histogram: dict[str, list[float]]  # {"log10_edges": [...], "counts": [...]}, cropped to the non-empty range
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
    logit_note: str
    head_shares: list[float]
    dfa: list[ExampleDFA] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["logits_top"] = [{"token": t, "value": v} for t, v in self.logits_top]
        d["logits_bottom"] = [{"token": t, "value": v} for t, v in self.logits_bottom]
        return d


_INDEX_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def _read_index(directory: Path) -> dict[str, Any]:
    p = directory / INDEX
    key = (str(p), p.stat().st_mtime)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = json.loads(p.read_text())
    return _INDEX_CACHE[key]


def read_dashboard(directory: Path, feature: int, n_bins: int = 5, per_bin: int = 4) -> FeatureDashboard:
    """One feature's dashboard from a built directory (a few memory-mapped slices; no model needed); a damaged
    cache is a one-line DashboardError naming the build command that replaces it."""
    directory = Path(directory)
    if not is_built(directory):
        raise DashboardError(f"no dashboards in {directory}")
    try:
        return _read_dashboard(directory, feature, n_bins, per_bin)
    except DashboardError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged cache file of any kind: one line, not a traceback
        layer = directory.name.removeprefix("layer-")
        raise DashboardError(
            f"the dashboard cache in {directory} is damaged ({type(exc).__name__}); rebuild it with "
            f"`{build_command(int(layer)) if layer.isdigit() else 'attnscope dashboards build'}`"
        ) from None


def _read_dashboard(directory: Path, feature: int, n_bins: int, per_bin: int) -> FeatureDashboard:
    idx = _read_index(directory)
    d_sae = idx["d_sae"]
    if not 0 <= feature < d_sae:
        raise DashboardError(f"feature {feature} is outside the layer-{idx['layer']} SAE (ids 0..{d_sae - 1})")
    vocab = idx["vocab"]
    spec = idx["spec"]
    C, T = spec["context"], idx["row_len"]
    with safe_open(str(directory / DATA), framework="np") as f:
        get = lambda name: f.get_slice(name)[feature]  # noqa: E731
        n_fire, sum_act = int(get("n_fire")), float(get("sum_act"))
        hist = get("hist")
        top_val, top_idx, top_win, top_tok = get("top_val"), get("top_idx"), get("top_win"), get("top_tok")
        s_val, s_idx, s_win, s_tok = get("samp_val"), get("samp_idx"), get("samp_win"), get("samp_tok")
        shares = get("head_share")
        lt_i, lt_v, lb_i, lb_v = get("logit_top_ids"), get("logit_top_vals"), get("logit_bot_ids"), get("logit_bot_vals")
        dfa_src, dfa_earlier, dfa_heads, dfa_pre = get("dfa_src"), get("dfa_earlier"), get("dfa_heads"), get("dfa_pre")
        dfa_bias = float(get("dfa_bias"))

    def example(val: float, g: int, win: np.ndarray, tok: np.ndarray) -> Example:
        keep = np.flatnonzero(tok >= 0)
        lo = int(keep[0])
        return Example(
            act=val, tokens=[vocab.get(str(int(t)), "?") for t in tok[keep].tolist()],
            acts=[float(a) for a in win[keep].astype(np.float32).tolist()], center=C - lo, row=g // T, pos=g % T,
        )

    top = [example(float(v), int(g), top_win[i], top_tok[i]) for i, (v, g) in enumerate(zip(top_val, top_idx)) if g >= 0 and v > 0]
    valid = int((s_idx >= 0).sum())
    quantiles: list[QuantileBin] = []
    if valid:
        # samples are sorted by activation, descending; bins from the weakest to the strongest quantile
        vals = s_val[:valid][::-1]
        wins, toks, gs = s_win[:valid][::-1], s_tok[:valid][::-1], s_idx[:valid][::-1]
        edges = _round_linspace(0, valid, min(n_bins, valid) + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            if b <= a:
                continue
            picks = sorted(set(_round_linspace(a, b - 1, min(per_bin, b - a))))
            quantiles.append(QuantileBin(
                lo=float(vals[a]), hi=float(vals[b - 1]), share=(b - a) / valid,
                examples=[example(float(vals[j]), int(gs[j]), wins[j], toks[j]) for j in reversed(picks)],
            ))
    width = (spec["hist_hi"] - spec["hist_lo"]) / spec["hist_bins"]
    nzb = np.flatnonzero(hist)
    if len(nzb):
        a, b = int(nzb[0]), int(nzb[-1]) + 1
        histogram = {"log10_edges": [spec["hist_lo"] + width * i for i in range(a, b + 1)],
                     "counts": [int(c) for c in hist[a:b].tolist()]}
    else:
        histogram = {"log10_edges": [], "counts": []}
    dfa = []
    for j in range(min(len(top), dfa_src.shape[0], spec["n_dfa"])):
        ex = top[j]
        n_src = ex.center + 1
        dfa.append(ExampleDFA(
            example=j, pre_act=float(dfa_pre[j]), dfa_bias=dfa_bias, dfa_heads=dfa_heads[j].tolist(),
            src_tokens=ex.tokens[:n_src], dfa_src=dfa_src[j][C + 1 - n_src :].tolist(),
            dfa_earlier=float(dfa_earlier[j]),
        ))
    tok = lambda i: vocab.get(str(int(i)), "?")  # noqa: E731
    return FeatureDashboard(
        model=idx["model"], layer=idx["layer"], feature=feature, d_sae=d_sae, n_tokens=idx["n_tokens"],
        density=n_fire / max(1, idx["n_tokens"]), mean_act=sum_act / n_fire if n_fire else 0.0,
        max_act=float(top_val[0]) if n_fire else 0.0, top=top, quantiles=quantiles, histogram=histogram,
        logits_top=[(tok(i), float(v)) for i, v in zip(lt_i, lt_v)],
        logits_bottom=[(tok(i), float(v)) for i, v in zip(lb_i, lb_v)],
        logit_note=idx["logit_note"], head_shares=shares.tolist(), dfa=dfa,
    )


def dashboard_summary(directory: Path) -> dict[str, Any]:
    """Index facts of a built directory (no vocabulary)."""
    idx = _read_index(Path(directory))
    return {k: v for k, v in idx.items() if k != "vocab"}


def load_dashboard(layer: int, feature: int, model: LoadedModel, sae: SAE, root: Path | None = None) -> FeatureDashboard:
    """The dashboard of `feature` at `layer` for this model and SAE; DashboardError (naming the build command) if
    they were not built."""
    directory = dashboard_dir(model, sae, layer, root)
    if not is_built(directory):
        raise DashboardError(f"dashboards for layer {layer} are not built yet; run `{build_command(layer)}`")
    return read_dashboard(directory, feature)


def feature_stats(directory: Path) -> dict[str, torch.Tensor]:
    """Whole-layer arrays for surveys: density `[d_sae]`, top_val/top_idx `[d_sae, n_top]`, top_tok/top_win
    `[d_sae, n_top, W]`, the top examples' DFA (dfa_src, dfa_earlier, dfa_heads, dfa_pre) and source facts
    (dfa_dist, dfa_top_src, dfa_src_tok, dfa_prev_tok, dfa_induction; see `source_facts`), head_share `[d_sae, H]`,
    and "index" (the JSON index, vocabulary included)."""
    directory = Path(directory)
    idx = _read_index(directory)
    names = ["n_fire", "top_val", "top_idx", "top_tok", "top_win", "dfa_src", "dfa_earlier", "dfa_heads", "dfa_pre",
             "dfa_bias", "head_share", "dfa_dist", "dfa_top_src", "dfa_src_tok", "dfa_prev_tok", "dfa_induction"]
    with safe_open(str(directory / DATA), framework="pt") as f:
        out = {n: f.get_tensor(n) for n in names}
    out["density"] = out["n_fire"].double() / max(1, idx["n_tokens"])
    out["index"] = idx
    return out
