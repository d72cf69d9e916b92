"""Specificity and sensitivity of a feature against a proxy (the paper's induction-feature deep dive).

A proxy is a rule that says, for every token of some text, whether the feature *should* fire there:

- `induction:TOKEN` the paper's `create_better_proxy_mask`: the current token (or its variant with a leading space
  added or removed, capitalised or lower-cased) appeared earlier in the row, and one of those earlier occurrences was
  followed by TOKEN ("TOKEN is next by induction");
- `token:TOKEN` the current token is TOKEN;
- `regex:PATTERN` the row's text up to and including the current token ends with a match of PATTERN.

Specificity: the histogram of the feature's activations where it fires, split by proxy true / false (false
positives are the proxy-false firings), and the expected-value plot: per bin, bin centre x count / the category's
firings, as the paper's code computes it. Sensitivity: of the tokens where the proxy holds, the share where the
feature fires (false negatives: the proxy holds, the feature is silent). BOS positions are left out.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from sae.analysis.fuzzy import FuzzyMatch
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError
from sae.engine.jobs import CancelToken, ProgressFn, Steps
from sae.engine.models import LoadedModel

PROXY_KINDS: dict[str, str] = {
    "induction": "TOKEN is next by induction: the current token (up to a leading space or case) appeared earlier and "
                 "was followed by TOKEN (the paper's proxy)",
    "token": "the current token is TOKEN",
    "regex": "the text up to and including the current token ends with a match of PATTERN",
}


class ProxyError(AttnscopeError, ValueError):
    """A proxy that cannot be read (one line for the user)."""


@dataclass(frozen=True)
class Proxy:
    kind: str  # a key of PROXY_KINDS
    arg: str  # TOKEN or PATTERN as given
    token_id: int | None = None  # induction / token: the single token id of `arg`

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.arg}"

    @property
    def rule(self) -> str:
        return PROXY_KINDS[self.kind].replace("TOKEN", repr(self.arg)).replace("PATTERN", repr(self.arg))


def parse_proxy(spec: str, encode: Callable[[str], list[int]]) -> Proxy:
    """`KIND:ARG` -> a Proxy; ProxyError when the kind is unknown, the regex does not compile or TOKEN is not one
    token of the model's vocabulary."""
    kind, sep, arg = spec.partition(":")
    kind = kind.strip()
    if not sep or kind not in PROXY_KINDS or not arg:
        raise ProxyError(f"a proxy is KIND:ARG with KIND one of {', '.join(PROXY_KINDS)} (e.g. 'induction: board'), "
                         f"got {spec!r}")
    if kind == "regex":
        try:
            re.compile(arg)
        except re.error as exc:
            raise ProxyError(f"the proxy's regular expression {arg!r} does not compile: {exc}") from None
        return Proxy(kind, arg)
    ids = encode(arg)
    if len(ids) != 1:
        raise ProxyError(f"the proxy's token {arg!r} is {len(ids)} tokens for this model; give one token "
                         "(with its leading space where it has one)")
    return Proxy(kind, arg, ids[0])


def induction_mask(rows: Sequence[Sequence[int]], target: int, variants: Callable[[int], Sequence[int]]) -> torch.Tensor:
    """`[n, seq]` bool: the paper's `create_better_proxy_mask` (first row position never counts as BOS is excluded
    by the caller). `variants(t)` lists t's space / case variants (as `FuzzyMatch.variants`)."""
    out = torch.zeros(len(rows), len(rows[0]) if len(rows) else 0, dtype=torch.bool)
    for b, row in enumerate(rows):
        seen: dict[int, list[int]] = {}
        for pos, tok in enumerate(row):
            for v in [tok, *variants(tok)]:
                if any(p + 1 < len(row) and row[p + 1] == target for p in seen.get(v, ())):
                    out[b, pos] = True
                    break
            seen.setdefault(tok, []).append(pos)
    return out


def regex_mask(texts_by_token: Sequence[Sequence[str]], pattern: str) -> torch.Tensor:
    """`[n, seq]` bool: the text of tokens 1..t (BOS left out) ends with a match of `pattern`."""
    rx = re.compile(f"(?:{pattern})\\Z", re.DOTALL)
    out = torch.zeros(len(texts_by_token), len(texts_by_token[0]) if texts_by_token else 0, dtype=torch.bool)
    for b, pieces in enumerate(texts_by_token):
        text = ""
        for pos, piece in enumerate(pieces):
            if pos == 0:
                continue
            text += piece
            out[b, pos] = rx.search(text) is not None
    return out


@dataclass(frozen=True)
class ProxyExample:
    tokens: list[str]  # the context around the token
    active: int  # index of the token in `tokens`
    act: float
    row: int
    pos: int


@dataclass(frozen=True)
class ProxyStudy:
    model: str
    layer: int
    feature: int
    proxy: str
    rule: str
    n_tokens: int
    n_fires: int
    n_proxy: int
    true_positives: int  # fires and the proxy holds
    false_positives: int  # fires, the proxy does not hold
    false_negatives: int  # the proxy holds, silent
    specificity: float | None  # true positives / firings (the share of firings the proxy explains)
    sensitivity: float | None  # true positives / proxy-true tokens
    edges: list[float]  # activation bin edges (firings only)
    counts_true: list[int]
    counts_false: list[int]
    expected_true: list[float]  # bin centre x count / proxy-true firings (the paper's expected-value plot)
    expected_false: list[float]
    false_positive_examples: tuple[ProxyExample, ...] = ()  # the strongest firings the proxy misses
    false_negative_examples: tuple[ProxyExample, ...] = ()  # proxy-true tokens where the feature is silent
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["false_positive_examples"] = [asdict(e) for e in self.false_positive_examples]
        d["false_negative_examples"] = [asdict(e) for e in self.false_negative_examples]
        return d


def histogram(acts: torch.Tensor, proxy: torch.Tensor, bins: int) -> tuple[list[float], list[int], list[int], list[float], list[float]]:
    """Firings `acts [k]` (> 0) and their proxy values `[k]` -> (edges [bins + 1] from the smallest to the largest
    firing, counts for proxy true / false, expected values for proxy true / false)."""
    if len(acts) == 0:
        return [], [0] * bins, [0] * bins, [0.0] * bins, [0.0] * bins
    lo, hi = float(acts.min()), float(acts.max())
    hi = hi if hi > lo else lo + 1e-6
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    idx = ((acts.double() - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    out = []
    for flag in (True, False):
        sel = idx[proxy == flag]
        counts = torch.bincount(sel, minlength=bins)
        ev = centres * counts / max(len(sel), 1)
        out.append((counts.tolist(), ev.tolist()))
    return edges.tolist(), out[0][0], out[1][0], out[0][1], out[1][1]


def _example(strs: list[str], act: torch.Tensor, b: int, p: int, before: int = 12, after: int = 3) -> ProxyExample:
    lo = max(1, p - before)
    return ProxyExample(tokens=strs[lo : p + after + 1], active=p - lo, act=float(act[b, p]), row=b, pos=p)


@torch.no_grad()
def proxy_study(
    model: LoadedModel, sae: SAE, layer: int, feature: int, proxy: Proxy, rows: torch.Tensor, bins: int = 20,
    n_examples: int = 5, batch_size: int = 16, source: str = "", on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> ProxyStudy:
    """The feature's activations on `rows [n, seq]` (BOS first) against `proxy`: histograms, expected values,
    specificity, sensitivity and examples of false positives and negatives."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise ProxyError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
    steps = Steps("proxy", -(-len(rows) // batch_size), on_progress, cancel, unit="batches")
    acts = []
    for i in range(0, len(rows), batch_size):
        z = model.capture_z(rows[i : i + batch_size].to(model.device), [layer])[layer]
        acts.append(sae.encode(z.to(sae.W_enc.dtype))[..., feature].float().cpu())
        steps.step()
    act = torch.cat(acts)  # [n, seq]
    toks = rows.tolist()
    strs = [model.token_strs(r) for r in toks]
    if proxy.kind == "induction":
        tok = model.tokenizer
        fuzzy = FuzzyMatch(lambda t: tok.decode([t]), model.encode)
        mask = induction_mask(toks, int(proxy.token_id or 0), lambda t: sorted(fuzzy.variants(t)))
    elif proxy.kind == "token":
        mask = rows.cpu() == int(proxy.token_id or 0)
    else:
        tok = model.tokenizer
        mask = regex_mask([[tok.decode([t]) for t in r] for r in toks], proxy.arg)
    valid = torch.ones_like(mask)
    valid[:, 0] = False  # BOS
    fires = (act > 0) & valid
    prox = mask & valid
    tp, fp, fn = int((fires & prox).sum()), int((fires & ~prox).sum()), int((~fires & prox).sum())
    edges, ct, cf, et, ef = histogram(act[fires], prox[fires], bins)
    fp_idx = (fires & ~prox).nonzero().tolist()
    fp_idx.sort(key=lambda bp: -float(act[bp[0], bp[1]]))
    fn_idx = (~fires & prox).nonzero().tolist()
    return ProxyStudy(
        model=model.name, layer=layer, feature=feature, proxy=proxy.spec, rule=proxy.rule,
        n_tokens=int(valid.sum()), n_fires=int(fires.sum()), n_proxy=int(prox.sum()),
        true_positives=tp, false_positives=fp, false_negatives=fn,
        specificity=tp / (tp + fp) if tp + fp else None, sensitivity=tp / (tp + fn) if tp + fn else None,
        edges=edges, counts_true=ct, counts_false=cf, expected_true=et, expected_false=ef,
        false_positive_examples=tuple(_example(strs[b], act, b, p) for b, p in fp_idx[:n_examples]),
        false_negative_examples=tuple(_example(strs[b], act, b, p) for b, p in fn_idx[:n_examples]),
        source=source,
    )
