"""Find features: by a token, a text fragment of their top examples, a human label, a family or automatic role
(all from the built dashboards, no model needed), or the strongest features at one position of a prompt across
the whole SAE (runs the model once).

A token's score for a feature is the feature's mean activation over every occurrence of that token in the
dashboards' stored windows (each top example and each random sample keeps the feature's activation on +-C tokens
around it), so tokens the feature ignores in those contexts pull the mean down. Arrays read from a dashboard
directory are cached per (directory, modification time), so a second query on the same layers costs milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sae.engine.errors import AttnscopeError

KINDS = ("token", "text", "label", "role", "position")
MIN_OCCURRENCES = 3  # a token seen fewer times in a feature's windows says too little about it


class SearchError(AttnscopeError, ValueError):
    """A search that cannot run (empty query, a token the dashboards never saw, ...)."""


@dataclass(frozen=True)
class SearchHit:
    layer: int
    feature: int
    score: float
    why: str


@dataclass(frozen=True)
class SearchResult:
    """Hits strongest first; `note` says how the score was computed."""

    by: str
    query: str
    hits: list[SearchHit]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading a layer once --------------------------------------------------------------------------------


@dataclass
class _Layer:
    layer: int
    sae_hash: str
    vocab: dict[str, str]  # id -> token string (the tokens the stored windows use)
    tok: np.ndarray  # [d_sae, M, W] token ids of every stored window (top examples then samples), -1 = none
    win: np.ndarray  # [d_sae, M, W] the feature's activation on them
    top_val: np.ndarray  # [d_sae, N]
    context: int
    texts: list[list[str]] | None = None  # per feature, its top examples' text (built on first text search)
    roles: dict[int, str] | None = None
    families: dict[int, str] | None = None


_CACHE: dict[tuple[str, int], _Layer] = {}


def _layer(directory: Path) -> _Layer:
    from safetensors import safe_open

    from sae.analysis.dashboards.store import DATA, INDEX

    directory = Path(directory)
    key = (str(directory.resolve()), (directory / DATA).stat().st_mtime_ns)
    if key not in _CACHE:
        import json

        idx = json.loads((directory / INDEX).read_text())
        with safe_open(str(directory / DATA), framework="np") as f:
            top_tok, top_win = f.get_tensor("top_tok"), f.get_tensor("top_win")
            s_tok, s_win = f.get_tensor("samp_tok"), f.get_tensor("samp_win")
            top_val = f.get_tensor("top_val")
        # an empty top slot has a window of -1 tokens; a sample slot never filled too
        tok = np.concatenate([top_tok, s_tok], axis=1)
        win = np.concatenate([top_win, s_win], axis=1).astype(np.float32)
        _CACHE[key] = _Layer(layer=int(idx["layer"]), sae_hash=str(idx["sae_hash"]), vocab=dict(idx["vocab"]),
                             tok=tok, win=win, top_val=top_val.astype(np.float32), context=int(idx["spec"]["context"]))
    return _CACHE[key]


def _visible(t: str) -> str:
    return t.replace("\n", "\\n").replace("\t", "\\t")


def _token_ids(vocab: Mapping[str, str], token: str) -> list[int]:
    """Vocabulary ids whose text is `token` exactly; else those equal to it once stripped; else case-insensitively."""
    for same in (lambda t: t == token, lambda t: t.strip() == token.strip(),
                 lambda t: t.strip().lower() == token.strip().lower()):
        ids = [int(i) for i, t in vocab.items() if same(t)]
        if ids:
            return ids
    return []


def _rank(hits: list[SearchHit], top: int) -> list[SearchHit]:
    return sorted(hits, key=lambda h: (-h.score, h.layer, h.feature))[:top]


# ---- the searches ----------------------------------------------------------------------------------------


def by_token(directories: Mapping[int, Path], token: str, top: int = 20) -> SearchResult:
    """Features with the highest mean activation on `token` across the stored windows of each layer."""
    if not token:
        raise SearchError("the token is empty")
    hits: list[SearchHit] = []
    seen = False
    for layer, d in sorted(directories.items()):
        L = _layer(d)
        ids = _token_ids(L.vocab, token)
        if not ids:
            continue
        seen = True
        mask = np.isin(L.tok, ids)  # [d_sae, M, W]
        count = mask.sum(axis=(1, 2))
        total = np.where(mask, L.win, 0.0).sum(axis=(1, 2))
        mean = np.where(count >= MIN_OCCURRENCES, total / np.maximum(count, 1), 0.0)
        names = sorted({repr(L.vocab[str(i)]) for i in ids})
        for f in np.argsort(-mean)[:top]:
            if mean[f] <= 0:
                break
            hits.append(SearchHit(layer, int(f), float(mean[f]),
                                  f"mean {mean[f]:.3g} over {int(count[f])} occurrences of {' / '.join(names)!s}"))
    if not seen:
        raise SearchError(f"the token {token!r} appears in none of the dashboards' stored examples")
    return SearchResult("token", token, _rank(hits, top),
                        f"mean activation over the token's occurrences in the stored windows (at least "
                        f"{MIN_OCCURRENCES}), top examples and random samples")


def _texts(L: _Layer) -> list[list[str]]:
    if L.texts is None:
        n_top = L.top_val.shape[1]
        size = max([int(i) for i in L.vocab] + [0]) + 2
        table = np.array([""] * size, dtype=object)  # id -> text; the last slot ("") stands for -1
        for i, t in L.vocab.items():
            table[int(i)] = t
        toks = L.tok[:, :n_top]  # [d_sae, N, W]
        pieces = table[np.where(toks >= 0, toks, size - 1)]
        live = L.top_val > 0  # [d_sae, N]
        L.texts = [["".join(pieces[f, k]) for k in range(n_top) if live[f, k]] for f in range(toks.shape[0])]
    return L.texts


def by_text(directories: Mapping[int, Path], fragment: str, top: int = 20) -> SearchResult:
    """Features one of whose top examples contains `fragment` (case-insensitive), by that example's activation."""
    if not fragment.strip():
        raise SearchError("the text to look for is empty")
    needle = fragment.lower()
    hits = []
    for layer, d in sorted(directories.items()):
        L = _layer(d)
        for f, rows in enumerate(_texts(L)):
            for k, text in enumerate(rows):
                if needle in text.lower():
                    hits.append(SearchHit(layer, f, float(L.top_val[f, k]), f"example {k + 1}: {_visible(text)[:80]}"))
                    break
    return SearchResult("text", fragment, _rank(hits, top), "the strongest top example containing the text")


def by_label(directories: Mapping[int, Path], labels: Any, text: str, top: int = 20) -> SearchResult:
    """Features whose human label (family or note, `sae.analysis.labels.LabelStore`) contains `text`."""
    if not text.strip():
        raise SearchError("the label to look for is empty")
    needle = text.lower()
    hits = []
    for layer, d in sorted(directories.items()):
        L = _layer(d)
        for lab in labels.labels(sae=L.sae_hash, layer=layer):
            if needle in lab.family.lower() or needle in (lab.note or "").lower():
                why = f"label: {lab.family}" + (f" — {lab.note}" if lab.note else "")
                hits.append(SearchHit(layer, lab.feature, float(L.top_val[lab.feature, 0]), why[:100]))
    return SearchResult("label", text, _rank(hits, top), "human labels (the study screen); strongest feature first")


ROLE_FILE = "search-roles.json"  # beside a build: its families and automatic roles, computed once


def role_maps(directory: Path, use_file: bool = True) -> tuple[dict[int, str], dict[int, str]]:
    """({feature: family}, {feature: automatic role}) of a built layer (induction candidates unconfirmed). Kept in
    `search-roles.json` beside the build (tied to the data file's modification time), so only the first search
    of a build pays for them (about half a second per layer)."""
    import json

    from sae.analysis.dashboards import feature_stats
    from sae.analysis.dashboards.store import DATA
    from sae.analysis.families import classify_layer
    from sae.analysis.roles import roles_layer
    from sae.engine.safe_io import atomic_write_text

    directory = Path(directory)
    stamp = (directory / DATA).stat().st_mtime_ns
    path = directory / ROLE_FILE
    if use_file:
        try:
            saved = json.loads(path.read_text())
            if saved.get("stamp") == stamp:
                return ({int(k): v for k, v in saved["families"].items()}, {int(k): v for k, v in saved["roles"].items()})
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass  # missing or damaged: computed again
    stats = feature_stats(directory)
    fams, roles = classify_layer(directory, n_examples=0, stats=stats).family_of(), roles_layer(directory, stats=stats).role_of()
    if use_file:
        try:
            atomic_write_text(path, json.dumps({"stamp": stamp, "families": fams, "roles": roles}))
        except OSError:
            pass  # a read-only cache only costs the next search the same half second
    return fams, roles


def by_role(directories: Mapping[int, Path], role: str, top: int = 20) -> SearchResult:
    """Features whose family (sae.analysis.families) or automatic role (sae.analysis.roles, induction candidates
    unconfirmed: that test needs the model) contains `role`, strongest first."""
    if not role.strip():
        raise SearchError("the role to look for is empty")
    needle = role.lower().strip()
    hits = []
    for layer, d in sorted(directories.items()):
        L = _layer(d)
        if L.families is None or L.roles is None:
            L.families, L.roles = role_maps(d)
        for f in sorted(set(L.families) | set(L.roles)):
            fam, rol = L.families.get(f, ""), L.roles.get(f, "")
            if needle in fam.lower() or needle in rol.lower():
                hits.append(SearchHit(layer, f, float(L.top_val[f, 0]), f"family {fam or '-'} · role {rol or '-'}"))
    return SearchResult("role", role, _rank(hits, top),
                        "families and automatic roles from the dashboards (induction candidates unconfirmed); "
                        "strongest first")


def at_position(model: Any, saes: Mapping[int, Any], prompt: str, pos: int, top: int = 20,
                layers: Sequence[int] | None = None) -> SearchResult:
    """The strongest features at token `pos` of `prompt` over every feature of each SAE (one forward pass)."""
    import torch

    from sae.analysis.dfa import prompt_tokens

    tokens, _ = prompt_tokens(model, prompt)
    n = tokens.shape[1]
    if not -n <= pos < n:
        raise SearchError(f"position {pos} is outside the prompt ({n} tokens, 0 = BOS)")
    pos %= n
    layers = sorted(saes) if layers is None else sorted(layers)
    with torch.no_grad():
        zs = model.capture_z(tokens, layers)
        hits = []
        for layer in layers:
            acts = saes[layer].encode(zs[layer][0, pos])  # [d_sae]
            vals, ids = acts.topk(min(top, acts.shape[0]))
            hits += [SearchHit(layer, int(i), float(v), f"act {v:.3g}") for v, i in zip(vals.tolist(), ids.tolist()) if v > 0]
    tok = model.token_strs([int(tokens[0, pos])])[0]
    return SearchResult("position", prompt, _rank(hits, top), f"activation at token {pos} {_visible(tok)!r}",
                        extra={"pos": pos, "token": tok})


def benchmark_search(directories: Mapping[int, Path], labels: Any, repeats: int = 5) -> dict[str, Any]:
    """Median wall time (ms) of each dashboard search on `directories`, the first (cold: reads the files) and the
    later (warm) calls apart."""
    import statistics
    import time

    first = _layer(next(iter(directories.values())))
    ids = first.tok[first.tok >= 0]
    common = first.vocab[str(int(np.bincount(ids).argmax()))] if ids.size else ""
    queries = {"token": lambda: by_token(directories, common), "text": lambda: by_text(directories, "the"),
               "label": lambda: by_label(directories, labels, "induction"),
               "role": lambda: by_role(directories, "previous")}
    t = time.perf_counter()
    for d in directories.values():
        role_maps(d, use_file=False)
    out: dict[str, Any] = {"layers": sorted(directories), "token": common,
                           "role_index_ms": 1000 * (time.perf_counter() - t)}
    _CACHE.clear()
    for name, q in queries.items():
        t = time.perf_counter()
        q()
        cold = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            q()
            times.append(time.perf_counter() - t)
        out[f"{name}_cold_ms"] = 1000 * cold
        out[f"{name}_warm_ms"] = 1000 * statistics.median(times)
    return out
