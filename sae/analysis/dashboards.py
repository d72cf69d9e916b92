"""Feature dashboards: what each SAE feature does across held-out text, built in one scan and opened instantly.

The build scans token rows once. Per batch it runs the model up to the SAE's layer, encodes z, and folds the
non-zero activations into running per-feature state (all vectorised over features):

- the top-N activations with their location and the feature's activations in a +-C token window;
- a uniform random sample of firing positions (priority sampling: every firing gets a random key, each feature keeps
  its largest keys), later split into activation-quantile bins;
- a histogram of log10(activation) on fixed bins, firing counts and sums (density, mean).

Whenever an example enters a feature's top-N, its DFA by source (and by head) is computed on the spot from that
batch's attention pattern and values, so no row is ever run twice. BOS positions are skipped (their z is the same
for every row). One scan can serve several layers (`build_layers`): the model runs once per batch, up to the deepest
layer's attention. The state is checkpointed, so an interrupted build resumes where it stopped and ends with exactly
the result of an uninterrupted one. Afterwards the static parts are added (head shares of the decoder norm, logit
effects). Everything is stored as one safetensors file with `[d_sae, ...]` tensors plus a JSON index, so one feature
is a handful of memory-mapped slices.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae.analysis.dfa import (
    capture_until_z,
    decoder_by_head,
    encoder_by_head,
    head_shares,
    pattern_hook_name,
    v_hook_name,
    z_hook_name,
)
from sae.analysis.dashboard_store import (  # noqa: F401  (re-exported: the reading side lives there)
    DATA,
    INDEX,
    REGISTRY,
    DashboardError,
    Example,
    ExampleDFA,
    FeatureDashboard,
    QuantileBin,
    _read_index,
    readable_build,
    build_command,
    cache_root,
    dashboard_summary,
    is_built,
    lookup_built,
    read_dashboard,
    register_built,
    source_key,
)
from sae.engine.models import LoadedModel
from sae.engine.safe_io import check_writable_dir
from sae.engine.autoencoder import SAE

PARTIAL = "partial.safetensors"
PARTIAL_INDEX = "partial.json"
FORMAT_VERSION = 2

LOGIT_NOTE = (
    "Logit effect = W_dec[i] split per head, through W_O, centred and multiplied by the final LayerNorm weight, then "
    "W_U. Approximation: the final LayerNorm's per-token scale (a positive factor, so it cannot change the ranking) and "
    "all later layers are ignored; it is the feature's direct path to the logits."
)


class BuildCancelled(Exception):
    """Raised internally when a cancel check fires; the build has saved its state."""


# ---- where dashboards live ----------------------------------------------------------------------------


# keyed by the bridge object itself, held weakly: an entry dies with its model, so a new model that happens to
# get a freed model's id() never inherits its fingerprint
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _hash_tensors(h: "hashlib._Hash", tensors: list[torch.Tensor | None]) -> None:
    for t in tensors:
        if t is None:
            continue
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())


def model_fingerprint(model: LoadedModel) -> str:
    """12 hex digits from the model's shape and a few weight tensors (embeddings, W_V, W_O)."""
    b = model.bridge
    try:
        cached = _FINGERPRINTS.get(b)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None:
        return cached
    h = hashlib.sha1()
    h.update(f"{model.n_layers}/{model.d_model}/{model.n_heads}/{model.d_head}/{model.d_vocab}".encode())
    _hash_tensors(h, [b.W_E[:512], getattr(b, "W_pos", None), b.W_V, b.W_O])
    digest = h.hexdigest()[:12]
    try:
        _FINGERPRINTS[b] = digest
    except TypeError:
        pass
    return digest


def sae_fingerprint(sae: SAE) -> str:
    """12 hex digits from the SAE's config and all its weights."""
    h = hashlib.sha1()
    c = sae.cfg
    h.update(f"{c.architecture}/{c.d_in}/{c.d_sae}/{c.hook_name}/{c.k}/{c.apply_b_dec_to_input}".encode())
    _hash_tensors(h, [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sae.threshold])
    return h.hexdigest()[:12]


def dashboard_dir(model: LoadedModel, sae: SAE, layer: int | None = None, root: Path | None = None) -> Path:
    """`<cache>/dashboards/<model-hash>-<sae-hash>/layer-L/`."""
    layer = sae.cfg.layer if layer is None else layer
    root = cache_root() if root is None else Path(root)
    return root / "dashboards" / f"{model_fingerprint(model)}-{sae_fingerprint(sae)}" / f"layer-{layer}"


# ---- settings -----------------------------------------------------------------------------------------


@dataclass
class DashboardSpec:
    """Build settings; everything that changes the stored result. A resumed build must use the same spec."""

    n_tokens: int = 1_000_000  # upper bound; the held-out split may be shorter
    context: int = 8  # tokens either side of an example
    n_top: int = 20
    n_samples: int = 64  # random firings kept per feature for the quantile bins
    n_dfa: int = 3  # top examples whose DFA by source a dashboard shows (every top example gets it)
    hist_lo: float = -4.0  # log10 activation range of the histogram
    hist_hi: float = 3.0
    hist_bins: int = 70
    n_logits: int = 10
    context_size: int = 128
    seed: int = 0
    corpus: str = "default"  # "default" = the embedded held-out split; else a path (see sae.engine.activations.read_corpus)

    @property
    def window(self) -> int:
        return 2 * self.context + 1


# ---- the scan (pure tensor code, tested against a brute-force scan) ------------------------------------


def _merge_slots(keys: torch.Tensor, f_new: torch.Tensor, key_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature, keep the K largest keys among the old ones and the new candidates, without moving old entries.

    keys `[d, K]` in no particular order (-inf = empty slot); f_new/key_new `[C]`. Each new entry that makes it
    takes the slot of one of the smallest old entries it pushes out. Updates `keys` in place and returns
    (rows, cols, i): new entry `i` (an index into f_new) now lives in slot (rows, cols), so a caller writes its
    payload there and only there.
    """
    empty = torch.zeros(0, dtype=torch.long)
    if f_new.numel() == 0:
        return empty, empty, empty
    K = keys.shape[1]
    order = torch.argsort(f_new, stable=True)
    fs = f_new[order]
    touched, counts = torch.unique_consecutive(fs, return_counts=True)
    row_of = torch.repeat_interleave(torch.arange(len(touched)), counts)
    rank = torch.arange(len(fs)) - (torch.cumsum(counts, 0) - counts)[row_of]
    pad = torch.full((len(touched), int(counts.max())), -math.inf, dtype=keys.dtype)
    pad[row_of, rank] = key_new[order]
    old = keys[touched]  # [n_t, K]
    top = torch.cat([old, pad], 1).topk(K, dim=1).indices
    kept = torch.zeros(len(touched), K + pad.shape[1], dtype=torch.bool).scatter_(1, top, True)
    kept_new = kept[:, K:] & (pad > -math.inf)
    n_new = kept_new.sum(1)
    r, j = kept_new.nonzero(as_tuple=True)  # row-major: within a row, j ascending
    within = torch.arange(len(r)) - (torch.cumsum(n_new, 0) - n_new)[r]
    slots = old.argsort(dim=1)[r, within]  # the smallest old entries make way
    rows = touched[r]
    keys[rows, slots] = pad[r, j]
    # position in the padded row -> index into the caller's f_new
    pos_in_sorted = (torch.cumsum(counts, 0) - counts)[r] + j
    return rows, slots, order[pos_in_sorted]


def _windows(acts: torch.Tensor, n: torch.Tensor, f: torch.Tensor, row_len: int, context: int) -> torch.Tensor:
    """Feature `f[c]`'s activations in a +-context window around flat position `n[c]` of `acts [N, d]` -> `[C, W]`.

    Windows stay inside their row (positions outside are 0)."""
    offs = torch.arange(-context, context + 1)
    t = (n % row_len).unsqueeze(1) + offs
    valid = (t >= 0) & (t < row_len)
    n2 = (n.unsqueeze(1) + offs).clamp(0, acts.shape[0] - 1)
    return acts[n2, f.unsqueeze(1)] * valid


def topk_acts(pre: torch.Tensor, k: int, chunk: int = 32) -> torch.Tensor:
    """`relu` of each row's top-k pre-activations, zeros elsewhere: the top-k SAE's activation, computed faster
    than `torch.topk` over the full width on CPU.

    pre `[N, d_sae]`. Each block of `chunk` features contributes its maximum; the k-th largest block maximum is a
    lower bound on the row's k-th largest value, so only entries at or above it (and above 0) can be kept, and an
    exact top-k runs on those few."""
    N, d = pre.shape
    if d % chunk or d // chunk <= k:
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    bound = pre.view(N, d // chunk, chunk).amax(-1).topk(k, dim=-1, sorted=False).values.amin(-1).clamp(min=0)
    n, f = (pre >= bound.unsqueeze(1)).nonzero(as_tuple=True)
    acts = torch.zeros_like(pre)
    if len(n) == 0:
        return acts
    counts = torch.bincount(n, minlength=N)
    rank = torch.arange(len(n)) - (torch.cumsum(counts, 0) - counts)[n]
    width = int(counts.max())
    pad_v = torch.full((N, width), -math.inf, dtype=pre.dtype)
    pad_f = torch.zeros(N, width, dtype=torch.long)
    pad_v[n, rank] = pre[n, f]
    pad_f[n, rank] = f
    v, j = pad_v.topk(min(k, width), dim=-1, sorted=False)
    keep = v > 0
    rows = torch.arange(N).unsqueeze(1).expand_as(v)
    acts[rows[keep], pad_f.gather(1, j)[keep]] = v[keep]
    return acts


class DashboardScan:
    """Running per-feature state of a scan. `update` folds in one batch of activations `[rows*row_len, d_sae]`."""

    def __init__(self, d_sae: int, spec: DashboardSpec, n_heads: int = 1, row_len: int | None = None) -> None:
        self.spec = spec
        self.d_sae = d_sae
        K, R, W = spec.n_top, spec.n_samples, spec.window
        nb = n_distance_bins(row_len or spec.context_size)
        # DFA by source of each top example, computed while its row is in memory
        self.dfa_src = torch.zeros(d_sae, K, spec.context + 1)
        self.dfa_earlier = torch.zeros(d_sae, K)
        self.dfa_heads = torch.zeros(d_sae, K, n_heads)
        self.dfa_pre = torch.zeros(d_sae, K)
        self.dfa_dist = torch.zeros(d_sae, K, nb)
        self.dfa_top_src = torch.full((d_sae, K), -1, dtype=torch.long)
        self.dfa_src_tok = torch.full((d_sae, K), -1, dtype=torch.int32)
        self.dfa_prev_tok = torch.full((d_sae, K), -1, dtype=torch.int32)
        self.dfa_induction = torch.zeros(d_sae, K, dtype=torch.uint8)
        self.top_val = torch.full((d_sae, K), -math.inf)
        self.top_idx = torch.full((d_sae, K), -1, dtype=torch.long)
        self.top_win = torch.zeros(d_sae, K, W, dtype=torch.float16)
        self.samp_key = torch.full((d_sae, R), -math.inf)
        self.samp_val = torch.zeros(d_sae, R)
        self.samp_idx = torch.full((d_sae, R), -1, dtype=torch.long)
        self.samp_win = torch.zeros(d_sae, R, W, dtype=torch.float16)
        self.n_fire = torch.zeros(d_sae, dtype=torch.long)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64)
        self.hist = torch.zeros(d_sae, spec.hist_bins, dtype=torch.long)
        self.n_tokens = 0  # positions counted (BOS excluded)
        self.rows_done = 0

    def sort_top(self) -> None:
        """Order each feature's top entries by activation, strongest first (the scan keeps them unordered)."""
        order = self.top_val.argsort(dim=1, descending=True, stable=True)
        for name in ("top_val", "top_idx", "top_win", *DFA_FIELDS):
            t = getattr(self, name)
            idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand_as(t)
            setattr(self, name, t.gather(1, idx))

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ["top_val", "top_idx", "top_win", "samp_key", "samp_val", "samp_idx", "samp_win", "n_fire", "sum_act",
                 "hist", *DFA_FIELDS]
        return {n: getattr(self, n).contiguous() for n in names}

    def load(self, tensors: dict[str, torch.Tensor], n_tokens: int, rows_done: int) -> None:
        for name, t in tensors.items():
            setattr(self, name, t.clone())
        self.n_tokens, self.rows_done = n_tokens, rows_done

    @torch.no_grad()
    def update(
        self, acts: torch.Tensor, row_len: int, skip_first: bool = True, dfa: dict[str, torch.Tensor] | None = None
    ) -> None:
        """acts: `[rows * row_len, d_sae]` (>= 0) for the next `rows` rows of the stream (row-major, float).

        With `skip_first`, the BOS position of every row is zeroed in place. `dfa` (pattern, v, tokens, w_enc, bias;
        see `example_dfa`) lets each new top example get its DFA by source now, while its row is in memory."""
        spec = self.spec
        n_rows = acts.shape[0] // row_len
        if skip_first:
            acts.view(n_rows, row_len, -1)[:, 0] = 0
        offset = self.rows_done * row_len
        nz = acts.nonzero()  # activations are >= 0, so non-zero means firing (cheaper than a mask first)
        n, f = nz[:, 0], nz[:, 1]
        val = acts[n, f]
        d = self.d_sae
        self.n_fire += torch.bincount(f, minlength=d)
        self.sum_act += torch.bincount(f, weights=val.double(), minlength=d)
        width = (spec.hist_hi - spec.hist_lo) / spec.hist_bins
        b = ((torch.log10(val) - spec.hist_lo) / width).floor().clamp(0, spec.hist_bins - 1).long()
        self.hist += torch.bincount(f * spec.hist_bins + b, minlength=d * spec.hist_bins).view(d, spec.hist_bins)

        cand = val > self.top_val.min(dim=1).values[f]
        if cand.any():
            cn, cf = n[cand], f[cand]
            r, c, i = _merge_slots(self.top_val, cf, val[cand])
            self.top_idx[r, c] = cn[i] + offset
            self.top_win[r, c] = _windows(acts, cn[i], cf[i], row_len, spec.context).to(self.top_win.dtype)
            if dfa is not None and len(r):
                got = example_dfa(dfa["pattern"], dfa["v"], dfa["tokens"], dfa["w_enc"], dfa["bias"],
                                  cn[i] // row_len, cn[i] % row_len, cf[i], spec.context)
                for name, val_ in got.items():
                    getattr(self, name)[r, c] = val_.to(getattr(self, name).dtype)

        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + self.rows_done)
        keys = torch.rand(len(val), generator=gen)
        cand = keys > self.samp_key.min(dim=1).values[f]
        if cand.any():
            cn, cf = n[cand], f[cand]
            r, c, i = _merge_slots(self.samp_key, cf, keys[cand])
            self.samp_val[r, c] = val[cand][i]
            self.samp_idx[r, c] = cn[i] + offset
            self.samp_win[r, c] = _windows(acts, cn[i], cf[i], row_len, spec.context).to(self.samp_win.dtype)
        self.n_tokens += n_rows * (row_len - 1 if skip_first else row_len)
        self.rows_done += n_rows


# ---- the static parts ---------------------------------------------------------------------------------


def _final_ln(model: LoadedModel) -> tuple[torch.Tensor | None, bool]:
    ln = getattr(model.bridge, "ln_final", None)
    if ln is None:
        return None, False
    comp = getattr(ln, "original_component", ln)
    w = getattr(comp, "weight", None)
    w = None if w is None else w.detach().float()
    if w is not None and (getattr(ln, "uses_weight_offset", False) or getattr(model.cfg, "rmsnorm_uses_offset", False)):
        w = w + 1.0
    centre = not (getattr(ln, "uses_rms_norm", False) or getattr(model.cfg, "uses_rms_norm", False))
    return w, centre


@torch.no_grad()
def logit_effects(model: LoadedModel, sae: SAE, layer: int, n: int = 10, chunk: int = 512) -> dict[str, torch.Tensor]:
    """Top and bottom `n` tokens of each feature's direct logit effect (see LOGIT_NOTE).

    Returns top_ids/top_vals/bot_ids/bot_vals, each `[d_sae, n]`."""
    W_O = model.bridge.W_O[layer].float()  # [H, dh, d_model]
    W_U = model.bridge.W_U.float()  # [d_model, vocab]
    w_ln, centre = _final_ln(model)
    dec = decoder_by_head(sae, model.n_heads).float()  # [d_sae, H, dh]
    n = min(n, W_U.shape[1])
    out = {k: [] for k in ("top_ids", "top_vals", "bot_ids", "bot_vals")}
    for i in range(0, dec.shape[0], chunk):
        dirs = torch.einsum("fhd,hdm->fm", dec[i : i + chunk], W_O)
        if centre:
            dirs = dirs - dirs.mean(-1, keepdim=True)
        if w_ln is not None:
            dirs = dirs * w_ln
        logits = dirs @ W_U
        top = logits.topk(n, dim=-1)
        bot = logits.topk(n, dim=-1, largest=False)
        out["top_ids"].append(top.indices)
        out["top_vals"].append(top.values)
        out["bot_ids"].append(bot.indices)
        out["bot_vals"].append(bot.values)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def _window_tokens(rows: torch.Tensor, idx: torch.Tensor, context: int) -> torch.Tensor:
    """Token ids around global positions `idx [...]` of `rows [R, T]` -> `[..., W]`, -1 outside the row / for idx -1."""
    T = rows.shape[1]
    flat = rows.flatten()
    offs = torch.arange(-context, context + 1)
    t = (idx % T).unsqueeze(-1) + offs
    valid = (t >= 0) & (t < T) & (idx >= 0).unsqueeze(-1)
    g = (idx.unsqueeze(-1) + offs).clamp(0, flat.numel() - 1)
    return torch.where(valid, flat[g], torch.full_like(g, -1)).to(torch.int32)


def n_distance_bins(row_len: int) -> int:
    """Bins of source distance `t - s`: bin b holds distances in [2^b - 1, 2^(b+1) - 1), so 0 | 1-2 | 3-6 | 7-14 ..."""
    return max(1, int(math.floor(math.log2(row_len))) + 1)


def distance_bin(dist: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log2(dist.double() + 1)).long()


def source_facts(per_src: torch.Tensor, tokens: torch.Tensor, dest: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the families rules read from one example's DFA by source.

    per_src `[P, T]` (DFA of each source position, zero after `dest`), tokens `[P, T]`, dest `[P]`. The BOS source
    (position 0) is left out: it is where heads park attention, not context. Returns per example: dfa_dist `[P, NB]`
    positive DFA mass per distance bin (`distance_bin`), dfa_top_src `[P]` the source with the largest positive DFA
    (-1 if none), dfa_src_tok / dfa_prev_tok `[P]` the token there and the one before it, dfa_induction `[P]` 1 when
    the token before the top source is a copy of the destination token (the source was *preceded by a copy of the
    current token*: "the token after the last time I appeared", the induction pattern) and the source is at least 2
    back (at 1 back, "x . y ." would make every previous-token head look like induction).
    """
    P, T = per_src.shape
    pos = torch.arange(T).unsqueeze(0).expand(P, T)
    dist = dest.unsqueeze(1) - pos
    usable = (pos >= 1) & (dist >= 0)
    mass = per_src.clamp(min=0) * usable
    bins = distance_bin(dist.clamp(min=0)).clamp(max=n_distance_bins(T) - 1)
    hist = torch.zeros(P, n_distance_bins(T), dtype=per_src.dtype).scatter_add_(1, bins, mass)
    masked = torch.where(usable, per_src, torch.full_like(per_src, -math.inf))
    best_val, best = masked.max(1)
    has = best_val > 0
    top = torch.where(has, best, torch.full_like(best, -1))
    src_tok = torch.where(has, tokens.gather(1, best.unsqueeze(1)).squeeze(1), torch.full_like(best, -1))
    prev = (best - 1).clamp(min=0)
    prev_tok = torch.where(has & (best >= 1), tokens.gather(1, prev.unsqueeze(1)).squeeze(1), torch.full_like(best, -1))
    dest_tok = tokens.gather(1, dest.unsqueeze(1)).squeeze(1)
    induction = has & (best >= 2) & (best < dest - 1) & (prev_tok == dest_tok)
    return {"dfa_dist": hist, "dfa_top_src": top, "dfa_src_tok": src_tok.int(), "dfa_prev_tok": prev_tok.int(),
            "dfa_induction": induction.to(torch.uint8)}


DFA_FIELDS = ("dfa_src", "dfa_earlier", "dfa_heads", "dfa_pre", "dfa_dist", "dfa_top_src", "dfa_src_tok",
              "dfa_prev_tok", "dfa_induction")


@torch.no_grad()
def example_dfa(
    pattern: torch.Tensor, v: torch.Tensor, tokens: torch.Tensor, w_enc: torch.Tensor, bias: torch.Tensor,
    p_b: torch.Tensor, p_t: torch.Tensor, p_f: torch.Tensor, context: int,
) -> dict[str, torch.Tensor]:
    """DFA by source of feature `p_f[p]` at position `p_t[p]` of batch row `p_b[p]`, for P examples.

    pattern `[B, H, T, T]`, v `[B, T, H, dh]` (value bias removed), tokens `[B, T]`, w_enc `[H, dh, d_sae]`,
    bias `[d_sae]` (`encoder_bias_total`). Returns per example: dfa_src `[P, context + 1]` (sources t-context..t,
    0 before the row start), dfa_earlier `[P]` (sources before the window), dfa_heads `[P, H]`, dfa_pre `[P]`
    (= sum of all sources + bias), and the `source_facts` fields."""
    P, T = len(p_b), pattern.shape[-1]
    contrib = torch.empty(P, pattern.shape[1], T, dtype=v.dtype)  # [P, H, T]
    order = torch.argsort(p_b, stable=True)
    rows, counts = torch.unique_consecutive(p_b[order], return_counts=True)
    start = 0
    for b, n in zip(rows.tolist(), counts.tolist()):
        sel = order[start : start + n]
        start += n
        # one batched matmul per row: every head's values against every chosen feature's encoder slice
        proj = torch.bmm(v[b].transpose(0, 1), w_enc[:, :, p_f[sel]])  # [H, T, n]
        contrib[sel] = proj.permute(2, 0, 1) * pattern[b][:, p_t[sel], :].transpose(0, 1)  # zero for s > t
    per_src = contrib.sum(1)  # [P, T]
    s_idx = p_t.unsqueeze(1) + torch.arange(-context, 1)
    win = per_src.gather(1, s_idx.clamp(min=0)) * (s_idx >= 0)
    total = per_src.sum(1)
    return {"dfa_src": win, "dfa_earlier": total - win.sum(1), "dfa_heads": contrib.sum(-1),
            "dfa_pre": total + bias[p_f], **source_facts(per_src, tokens[p_b], p_t)}


# ---- the build ----------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    directory: Path
    status: str  # built | cancelled | cached
    n_tokens: int
    scan_seconds: float = 0.0
    total_seconds: float = 0.0
    tokens_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["directory"] = str(self.directory)
        return d


def heldout_rows(
    model: LoadedModel, n_tokens: int, context_size: int, docs: list[str] | None = None, corpus: str = "default"
) -> torch.Tensor:
    """Held-out text packed into `[rows, context_size]` (BOS first), enough rows for `n_tokens` (or all there is).

    `docs` wins over `corpus` ("default": the embedded corpus's held-out split; or a file / directory)."""
    from sae.engine.activations import pack_tokens

    if docs is None:
        from sae.engine.activations import read_corpus

        docs = read_corpus(corpus, split="heldout")
    max_rows = max(1, math.ceil(n_tokens / context_size))
    return pack_tokens(docs, model.encode, context_size, model.bos_token_id, max_rows=max_rows)


def _is_cancelled(cancel: Callable[[], bool] | threading.Event | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _save_partial(directory: Path, scan: DashboardScan, meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (PARTIAL + ".tmp")
    save_file(scan.tensors(), str(tmp))
    os.replace(tmp, directory / PARTIAL)
    meta = dict(meta, n_tokens_seen=scan.n_tokens, rows_done=scan.rows_done)
    (directory / (PARTIAL_INDEX + ".tmp")).write_text(json.dumps(meta))
    os.replace(directory / (PARTIAL_INDEX + ".tmp"), directory / PARTIAL_INDEX)


def _rows_hash(rows: torch.Tensor) -> str:
    return hashlib.sha1(rows.to(torch.int32).contiguous().numpy().tobytes()).hexdigest()[:16]


def build_dashboards(
    model: LoadedModel,
    sae: SAE,
    layer: int | None = None,
    spec: DashboardSpec | None = None,
    docs: list[str] | None = None,
    directory: Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    batch_rows: int = 32,
    checkpoint_s: float = 20.0,
    force: bool = False,
) -> BuildResult:
    """Scan held-out rows once and write the dashboards of every feature of `sae` (see the module docstring).

    progress(info) gets {"done", "total" (tokens), "tokens_per_s", "eta_s", "note"}. `cancel` (a callable or an
    Event) is polled every batch; a cancelled build saves its state and returns status "cancelled"; calling again
    with the same spec resumes. An existing finished build is returned as "cached" unless `force`.
    """
    layer = sae.cfg.layer if layer is None else layer
    dirs = None if directory is None else {layer: Path(directory)}
    return build_layers(model, {layer: sae}, spec, docs, dirs, progress, cancel, batch_rows, checkpoint_s, force)[layer]


def build_layers(
    model: LoadedModel,
    saes: dict[int, SAE],
    spec: DashboardSpec | None = None,
    docs: list[str] | None = None,
    directories: dict[int, Path] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    batch_rows: int = 32,
    checkpoint_s: float = 20.0,
    force: bool = False,
) -> dict[int, BuildResult]:
    """`build_dashboards` for several layers from one scan: each model pass stops after the deepest layer's
    attention and feeds every layer's SAE, so building all layers costs about one forward pass per row."""
    t_start = time.perf_counter()
    spec = replace(spec or DashboardSpec())
    spec.context_size = min(spec.context_size, model.n_ctx)
    dirs = {layer: Path(directories[layer]) if directories and layer in directories else dashboard_dir(model, sae, layer)
            for layer, sae in saes.items()}
    results: dict[int, BuildResult] = {}
    for layer, d in dirs.items():
        idx = None if force else readable_build(d)  # a damaged cache is rebuilt, no --force needed
        if idx is not None and idx.get("spec") == asdict(spec) and idx.get("version") == FORMAT_VERSION:
            results[layer] = BuildResult(d, "cached", int(idx.get("n_tokens", 0)))
    todo = sorted(layer for layer in saes if layer not in results)
    if not todo:
        return results
    for layer in todo:  # a cache dir that is a file or read-only fails now, not after the scan
        check_writable_dir(dirs[layer], "dashboard cache folder")
    rows = heldout_rows(model, spec.n_tokens, spec.context_size, docs, spec.corpus)
    if rows.shape[0] == 0:
        raise DashboardError("the held-out text is shorter than one context row")
    T = rows.shape[1]
    rows_hash = _rows_hash(rows)
    scans: dict[int, DashboardScan] = {}
    metas: dict[int, dict[str, Any]] = {}
    for layer in todo:
        metas[layer] = {"spec": asdict(spec), "rows_hash": rows_hash, "layer": layer, "version": FORMAT_VERSION}
        scans[layer] = DashboardScan(saes[layer].cfg.d_sae, spec, model.n_heads, T)
        d = dirs[layer]
        if (d / PARTIAL_INDEX).is_file() and (d / PARTIAL).is_file() and not force:
            try:
                old = json.loads((d / PARTIAL_INDEX).read_text())
                if isinstance(old, dict) and all(old.get(k) == v for k, v in metas[layer].items()):
                    scans[layer].load(load_file(str(d / PARTIAL)), old["n_tokens_seen"], old["rows_done"])
            except Exception:  # noqa: BLE001 - a damaged partial scan: start this layer afresh
                scans[layer] = DashboardScan(saes[layer].cfg.d_sae, spec, model.n_heads, T)
    total = rows.shape[0] * T
    deepest = todo[-1]
    z_names = tuple(z_hook_name(layer) for layer in todo if layer != deepest)
    z_names += tuple(n for layer in todo for n in (pattern_hook_name(layer), v_hook_name(layer)))
    enc = {layer: (saes[layer].W_enc.detach(), saes[layer].encoder_bias_total.detach(), model.value_bias(layer))
           for layer in todo}
    enc_heads = {layer: (encoder_by_head(saes[layer], model.n_heads).detach().float().cpu(),
                         saes[layer].encoder_bias_total.detach().float().cpu()) for layer in todo}
    row = min(sc.rows_done for sc in scans.values())
    done_at_start = row * T
    t_scan = last_ckpt = time.perf_counter()

    def report(note: str) -> None:
        if progress is None:
            return
        done = row * T
        el = time.perf_counter() - t_scan
        rate = (done - done_at_start) / el if el > 0 else 0.0
        progress({"done": done, "total": total, "tokens_per_s": rate,
                  "eta_s": (total - done) / rate if rate > 0 else None, "note": note})

    def save_all() -> None:
        for layer, sc in scans.items():
            if sc.rows_done > 0:
                _save_partial(dirs[layer], sc, metas[layer])

    try:
        with torch.inference_mode():
            while row < rows.shape[0]:
                if _is_cancelled(cancel):
                    raise BuildCancelled
                # never straddle a layer's resume point, so each layer restarts exactly where it stopped
                stop = min([row + batch_rows] + [sc.rows_done for sc in scans.values() if sc.rows_done > row])
                batch = rows[row:stop].to(model.device)
                got = capture_until_z(model, batch, deepest, z_names)
                for layer in todo:
                    sc, sae = scans[layer], saes[layer]
                    if sc.rows_done > row:  # this layer got further before an interruption
                        continue
                    w_enc, enc_bias, b_v = enc[layer]
                    z = (got[z_hook_name(layer)] - b_v).reshape(-1, sae.cfg.d_in).to(w_enc.dtype)  # value bias out
                    pre = torch.addmm(enc_bias, z, w_enc)  # == sae.encode_pre(z), one fused call
                    arch = sae.cfg.architecture
                    if arch == "standard":
                        acts = pre.relu_()
                    elif arch == "topk" and pre.device.type == "cpu":
                        acts = topk_acts(pre, int(sae.cfg.k))
                    else:
                        acts = sae.activation(pre).clamp_(min=0)
                    v = got[v_hook_name(layer)]
                    v = v - (b_v if v.shape[-2] == b_v.shape[0] else b_v[:: b_v.shape[0] // v.shape[-2]])
                    if v.shape[-2] != model.n_heads:  # grouped-query attention
                        v = v.repeat_interleave(model.n_heads // v.shape[-2], dim=-2)
                    dfa = {"pattern": got[pattern_hook_name(layer)].float().cpu(), "v": v.float().cpu(),
                           "tokens": batch.cpu(), "w_enc": enc_heads[layer][0], "bias": enc_heads[layer][1]}
                    sc.update(acts.float().cpu(), T, dfa=dfa)
                row += batch.shape[0]
                if time.perf_counter() - last_ckpt > checkpoint_s:
                    save_all()
                    last_ckpt = time.perf_counter()
                report("scanning")
    except BaseException as exc:
        save_all()
        if isinstance(exc, BuildCancelled):
            el = time.perf_counter() - t_scan
            results.update({layer: BuildResult(dirs[layer], "cancelled", scans[layer].n_tokens, el) for layer in todo})
            return results
        raise
    scan_s = time.perf_counter() - t_scan
    rate = (total - done_at_start) / scan_s if scan_s > 0 else 0.0
    for layer in todo:
        report(f"writing layer {layer}")
        sae, sc = saes[layer], scans[layer]
        sc.sort_top()
        with torch.no_grad():
            dfa = {name: getattr(sc, name) for name in DFA_FIELDS}
            logits = logit_effects(model, sae, layer, spec.n_logits)
            shares = head_shares(sae, model.n_heads).detach().float().cpu()
        _write_final(dirs[layer], model, sae, layer, spec, rows, sc, dfa, logits, shares,
                     {"scan_seconds": scan_s, "tokens_per_s": rate, "layers_in_scan": todo})
        for name in (PARTIAL, PARTIAL_INDEX):
            (dirs[layer] / name).unlink(missing_ok=True)
        results[layer] = BuildResult(dirs[layer], "built", sc.n_tokens, scan_s, time.perf_counter() - t_start, rate)
    return results


def _write_final(
    directory: Path, model: LoadedModel, sae: SAE, layer: int, spec: DashboardSpec, rows: torch.Tensor,
    scan: DashboardScan, dfa: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], shares: torch.Tensor,
    stats: dict[str, float],
) -> None:
    # quantile samples sorted by activation (descending); empty slots last
    sv = torch.where(scan.samp_idx >= 0, scan.samp_val, torch.full_like(scan.samp_val, -1.0))
    order = sv.argsort(dim=1, descending=True)
    samp_val = sv.gather(1, order)
    samp_idx = scan.samp_idx.gather(1, order)
    samp_win = scan.samp_win.gather(1, order.unsqueeze(-1).expand_as(scan.samp_win))
    top_tok = _window_tokens(rows, scan.top_idx, spec.context)
    samp_tok = _window_tokens(rows, samp_idx, spec.context)
    tensors = {
        "n_fire": scan.n_fire,
        "sum_act": scan.sum_act,
        "hist": scan.hist.to(torch.int32),
        "top_val": scan.top_val,
        "top_idx": scan.top_idx,
        "top_win": scan.top_win,
        "top_tok": top_tok,
        "samp_val": samp_val,
        "samp_idx": samp_idx,
        "samp_win": samp_win,
        "samp_tok": samp_tok,
        "head_share": shares,
        "dfa_bias": sae.encoder_bias_total.detach().float().cpu(),
        **{f"logit_{k}": v for k, v in logits.items()},
        **dfa,
    }
    used = torch.unique(torch.cat([top_tok.flatten(), samp_tok.flatten(), logits["top_ids"].flatten().int(),
                                   logits["bot_ids"].flatten().int()]))
    used = used[used >= 0].tolist()
    vocab = dict(zip((str(i) for i in used), model.token_strs(used)))
    index = {
        "version": FORMAT_VERSION,
        "model": model.name,
        "model_hash": model_fingerprint(model),
        "sae_hash": sae_fingerprint(sae),
        "hook_name": sae.cfg.hook_name,
        "layer": layer,
        "d_sae": sae.cfg.d_sae,
        "n_heads": model.n_heads,
        "n_tokens": scan.n_tokens,
        "n_rows": int(rows.shape[0]),
        "row_len": int(rows.shape[1]),
        "spec": asdict(spec),
        "bos_excluded": True,
        "logit_note": LOGIT_NOTE,
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **stats,
        "vocab": vocab,
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / (DATA + ".tmp")))
    os.replace(directory / (DATA + ".tmp"), directory / DATA)
    (directory / (INDEX + ".tmp")).write_text(json.dumps(index))
    os.replace(directory / (INDEX + ".tmp"), directory / INDEX)


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


def benchmark_build(model: LoadedModel, saes: dict[int, SAE], n_tokens: int = 200_000, batch_rows: int = 32,
                    progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build dashboards of `saes` ({layer: SAE}, one scan) from `n_tokens` held-out tokens into a temporary
    directory and time it.

    Returns tokens/s of the scan (the part that grows with the corpus) and of the whole build, plus the machine's
    load average and torch's thread count, since a busy machine slows the numbers down."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        dirs = {layer: Path(tmp) / f"layer-{layer}" for layer in saes}
        res = build_layers(model, saes, DashboardSpec(n_tokens=n_tokens), directories=dirs, progress=progress,
                           batch_rows=batch_rows, force=True)
    first = res[min(res)]
    scanned = first.n_tokens
    return {
        "model": model.name,
        "layers": sorted(saes),
        "d_sae": {str(k): v.cfg.d_sae for k, v in sorted(saes.items())},
        "tokens": scanned,
        "scan_seconds": first.scan_seconds,
        "total_seconds": max(r.total_seconds for r in res.values()),
        "scan_tokens_per_s": first.tokens_per_s,
        "build_tokens_per_s": scanned / max(r.total_seconds for r in res.values()),
        "target_tokens_per_s": 50_000,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
    }
