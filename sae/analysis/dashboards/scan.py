"""The dashboard scan: running per-feature state folded in batch by batch, and each top example's DFA by source.

Pure tensor code, tested against a brute-force scan (tests/analysis/test_dashboards.py). `DashboardSpec` holds the settings
that change the stored result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sae.engine.selection import topk_acts  # noqa: F401 - re-exported: the dashboards' top-k activation


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
    corpus: str = "default"  # a name for the held-out texts ("default": the embedded held-out split) or a path

    @property
    def window(self) -> int:
        return 2 * self.context + 1


def _key_bits(key: torch.Tensor) -> torch.Tensor:
    """float32 keys >= 0 (or -inf, an empty slot) -> int64 in the same order (their IEEE bits, read as integers)."""
    return key.float().contiguous().view(torch.int32).long()


def _grouped_order(f: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Indices that sort entries by feature `f`, then by `key` descending, ties in their given order: one stable sort
    of an int64 composite (keys are >= 0, see `_key_bits`)."""
    return torch.argsort(f * (1 << 32) + ((1 << 31) - 1 - _key_bits(key)), stable=True)


def _merge_slots(
    keys: torch.Tensor, f_new: torch.Tensor, key_new: torch.Tensor, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature, keep the K best keys among the old ones and the new candidates, without moving old entries.

    keys `[d, K]` (>= 0, or -inf for an empty slot) in no particular order; f_new/key_new `[C]`, in the order the
    entries were seen; pos `[d, K]`, optional: where each old entry was seen. Best = largest key, ties going to the
    entry seen first (an old entry before every new one; among old ones the smaller `pos`, without `pos` an
    unspecified one). Each new entry that makes it takes the slot of one of the old entries it pushes out. Updates
    `keys` in place and returns (rows, cols, i): new entry `i` (an index into f_new) now lives in slot (rows, cols),
    so a caller writes its payload there and only there.
    """
    empty = torch.zeros(0, dtype=torch.long, device=keys.device)
    if f_new.numel() == 0:
        return empty, empty, empty
    K = keys.shape[1]
    dev = keys.device
    # grouped by feature, best first; only each feature's K best new entries can enter
    order = _grouped_order(f_new, key_new)
    touched, counts = torch.unique_consecutive(f_new.index_select(0, order), return_counts=True)
    grp = torch.repeat_interleave(torch.arange(len(touched), device=dev), counts)
    rank = torch.arange(len(order), device=dev) - (torch.cumsum(counts, 0) - counts).index_select(0, grp)
    best = _where(rank < K)
    order, grp, rank = order.index_select(0, best), grp.index_select(0, best), rank.index_select(0, best)
    ks = key_new.index_select(0, order).to(keys.dtype)
    # each touched feature's old entries weakest first (equal keys: the latest first; empty slots first): the
    # order in which they make way, and sorted keys to count, by binary search, the old entries >= a new one
    old = keys.index_select(0, touched)  # [n_t, K]
    if pos is None:
        evict = old.argsort(dim=1, stable=True)
    else:
        evict = torch.argsort(_key_bits(old) * (1 << 32) + ((1 << 31) - 1 - pos.index_select(0, touched)), dim=1,
                              stable=True)
    old_sorted = old.gather(1, evict)
    width = int(rank.max()) + 1
    at = grp * width + rank  # each new entry's cell of a [n_t, width] block
    pad = torch.full((len(touched) * width,), math.inf, dtype=keys.dtype, device=dev)
    pad.index_copy_(0, at, ks)
    n_below = torch.searchsorted(old_sorted, pad.view(-1, width)).view(-1).index_select(0, at)  # old entries < it
    surv = _where(rank + (K - n_below) < K)  # its place among old and new; each feature's survivors: its first m
    if len(surv) == 0:
        return empty, empty, empty
    order, grp, rank, ks = (x.index_select(0, surv) for x in (order, grp, rank, ks))
    slots = evict.view(-1).index_select(0, grp * K + rank)  # the m weakest old entries make way
    rows = touched.index_select(0, grp)
    keys.view(-1).index_copy_(0, rows * K + slots, ks)
    return rows, slots, order


def _where(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D bool `mask`, ascending (numpy's scan on the CPU: several times faster
    than `nonzero` there)."""
    if mask.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _put(state: torch.Tensor, slot: torch.Tensor, values: torch.Tensor) -> None:
    """`state [d, K, ...][slot // K, slot % K] = values [C, ...]` (cast to the state's dtype), as one row copy."""
    n = state.shape[0] * state.shape[1]
    state.view(n, -1).index_copy_(0, slot, values.reshape(len(slot), -1).to(state.dtype))


def _firings(acts: torch.Tensor) -> torch.Tensor:
    """Flat (row-major) indices of the non-zero entries of `acts [N, d]`, ascending -> `[F]` (int64).

    On the CPU, numpy's compare-then-scan runs about 4x faster than `torch.nonzero` on a float tensor."""
    flat = acts.reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64, torch.float16):
        import numpy as np

        return torch.from_numpy(np.flatnonzero(flat.numpy() != 0))
    return flat.nonzero().squeeze(1)


def _put_windows(
    state: torch.Tensor, slot: torch.Tensor, flat: torch.Tensor, d: int, n: torch.Tensor, f: torch.Tensor,
    row_len: int, context: int,
) -> None:
    """`_put(state, slot, _windows(...))`, reading the windows in position order: each one reads a column of `acts`
    across 2 * context + 1 rows, so neighbours in position share those rows (pages, cache lines) where neighbours in
    feature order would not."""
    order = torch.argsort(n * d + f)
    _put(state, slot.index_select(0, order),
         _windows(flat, d, n.index_select(0, order), f.index_select(0, order), row_len, context))


def _uniform_cut(key: torch.Tensor, f: torch.Tensor, floor: torch.Tensor, K: int) -> torch.Tensor:
    """Indices of the candidates that can still be among their feature's K largest keys, found without sorting.

    key `[C]`, uniform on (floor[f], 1) (a sample key above its feature's current K-th), f `[C]`, floor `[d]`
    (-inf: treated as 0). A feature with c candidates keeps those above the level that about 2K + 8 of them
    exceed; when fewer than K do (or c is small), it keeps them all, so no candidate that would enter is lost."""
    d = floor.shape[0]
    count = torch.bincount(f, minlength=d)
    if len(key) == 0 or int(count.max()) <= 2 * K + 8:
        return torch.arange(len(key), device=key.device)
    lo = floor.clamp(min=0)
    level = 1 - (1 - lo) * ((2 * K + 8) / count.clamp(min=1)).clamp(max=1)  # [d]
    keep = key >= level.index_select(0, f)
    short = torch.bincount(f.index_select(0, _where(keep)), minlength=d) < count.clamp(max=K)
    if bool(short.any()):  # unlucky draws: those features keep every candidate
        keep |= short.index_select(0, f)
    return _where(keep)


def _firing_cells(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_firings` of `acts [N, d]` with each one's row and column -> (flat index, n, f), each `[F]` on acts' device
    (on the CPU numpy's divmod by a scalar, about 2.5x faster than torch's)."""
    d = acts.shape[-1]
    idx = _firings(acts)
    if acts.device.type == "cpu":
        import numpy as np

        n, f = np.divmod(idx.numpy(), d)
        return idx, torch.from_numpy(n), torch.from_numpy(f)
    idx = idx.to(acts.device)
    n = idx // d
    return idx, n, idx - n * d


def _windows(flat: torch.Tensor, d: int, n: torch.Tensor, f: torch.Tensor, row_len: int, context: int) -> torch.Tensor:
    """Feature `f[c]`'s activations in a +-context window around position `n[c]` of `acts [N, d]` (given flat as
    `flat [N * d]`) -> `[C, W]`. Windows stay inside their row (positions outside are 0)."""
    offs = torch.arange(-context, context + 1, device=flat.device)
    lin = (n * d + f).unsqueeze(1) + offs * d
    got = flat.index_select(0, lin.clamp_(0, flat.numel() - 1).view(-1)).view(lin.shape)
    t = n % row_len
    edge = _where((t < context) | (t >= row_len - context))  # windows that cross a row's end
    if len(edge):
        te = t.index_select(0, edge).unsqueeze(1) + offs
        got.index_copy_(0, edge, got.index_select(0, edge) * ((te >= 0) & (te < row_len)))
    return got


class DashboardScan:
    """Running per-feature state of a scan. `update` folds in one batch of activations `[rows*row_len, d_sae]`.

    The state lives on `device` (the model's): a batch's activations, patterns and values never leave it."""

    def __init__(
        self, d_sae: int, spec: DashboardSpec, n_heads: int = 1, row_len: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.spec = spec
        self.d_sae = d_sae
        self.device = torch.device(device)
        K, R, W = spec.n_top, spec.n_samples, spec.window
        nb = n_distance_bins(row_len or spec.context_size)
        dev = {"device": self.device}
        # DFA by source of each top example, computed while its row is in memory
        self.dfa_src = torch.zeros(d_sae, K, spec.context + 1, **dev)
        self.dfa_earlier = torch.zeros(d_sae, K, **dev)
        self.dfa_heads = torch.zeros(d_sae, K, n_heads, **dev)
        self.dfa_pre = torch.zeros(d_sae, K, **dev)
        self.dfa_dist = torch.zeros(d_sae, K, nb, **dev)
        self.dfa_top_src = torch.full((d_sae, K), -1, dtype=torch.long, **dev)
        self.dfa_src_tok = torch.full((d_sae, K), -1, dtype=torch.int32, **dev)
        self.dfa_prev_tok = torch.full((d_sae, K), -1, dtype=torch.int32, **dev)
        self.dfa_induction = torch.zeros(d_sae, K, dtype=torch.uint8, **dev)
        self.top_val = torch.full((d_sae, K), -math.inf, **dev)
        self.top_idx = torch.full((d_sae, K), -1, dtype=torch.long, **dev)
        self.top_win = torch.zeros(d_sae, K, W, dtype=torch.float16, **dev)
        self.samp_key = torch.full((d_sae, R), -math.inf, **dev)
        self.samp_val = torch.zeros(d_sae, R, **dev)
        self.samp_idx = torch.full((d_sae, R), -1, dtype=torch.long, **dev)
        self.samp_win = torch.zeros(d_sae, R, W, dtype=torch.float16, **dev)
        self.n_fire = torch.zeros(d_sae, dtype=torch.long, **dev)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64, **dev)
        self.hist = torch.zeros(d_sae, spec.hist_bins, dtype=torch.long, **dev)
        self.n_tokens = 0  # positions counted (BOS excluded)
        self.rows_done = 0
        # the last update's new top entries, whose DFA waits for the next update (fewer of them are still there
        # by then): (flat slots, rows in that update, positions, features, stream positions, that update's `dfa`)
        self._pending: tuple[Any, ...] | None = None

    def finish(self) -> None:
        """The DFA of the top entries still waiting for it (`update` computes each entry's one update later, for
        those not evicted by then). Reading the state (`tensors`, `sort_top`, `to`) finishes first."""
        if self._pending is None:
            return
        slot, p_b, p_t, p_f, g, dfa = self._pending
        self._pending = None
        live = _where(self.top_idx.view(-1).index_select(0, slot) == g)  # the entries still in their slots
        if len(live) == 0:
            return
        slot, p_b, p_t, p_f = (x.index_select(0, live) for x in (slot, p_b, p_t, p_f))
        _, got = _example_dfa_sorted(dfa["pattern"], dfa["v"], dfa["tokens"], dfa["w_enc"], dfa["bias"], p_b, p_t,
                                     p_f, self.spec.context, dfa.get("w_feat"), in_order=True)
        for name, val in got.items():
            _put(getattr(self, name), slot, val)

    def to(self, device: torch.device | str) -> "DashboardScan":
        """Move the state to `device` (in place); returns self."""
        self.finish()
        self.device = torch.device(device)
        for name in self._names():
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def sort_top(self) -> None:
        """Order each feature's top entries strongest first, equal activations by position (the scan keeps them
        unordered; empty slots last)."""
        self.finish()
        by_pos = self.top_idx.argsort(dim=1, stable=True)
        order = by_pos.gather(1, self.top_val.gather(1, by_pos).argsort(dim=1, descending=True, stable=True))
        for name in ("top_val", "top_idx", "top_win", *DFA_FIELDS):
            t = getattr(self, name)
            idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand_as(t)
            setattr(self, name, t.gather(1, idx))

    @staticmethod
    def _names() -> list[str]:
        return ["top_val", "top_idx", "top_win", "samp_key", "samp_val", "samp_idx", "samp_win", "n_fire", "sum_act",
                "hist", *DFA_FIELDS]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as CPU tensors (what a partial build saves)."""
        self.finish()
        return {n: getattr(self, n).contiguous().cpu() for n in self._names()}

    def load(self, tensors: dict[str, torch.Tensor], n_tokens: int, rows_done: int) -> None:
        self._pending = None
        for name, t in tensors.items():
            setattr(self, name, t.to(self.device, copy=True))
        self.n_tokens, self.rows_done = n_tokens, rows_done

    @torch.no_grad()
    def update(
        self, acts: torch.Tensor, row_len: int, skip_first: bool = True, dfa: dict[str, Any] | None = None,
        key_rows: int | None = None,
    ) -> None:
        """acts: `[rows * row_len, d_sae]` (>= 0) for the next `rows` rows of the stream (row-major, float), on the
        scan's device.

        With `skip_first`, the BOS position of every row is zeroed in place. `dfa` (pattern, v, tokens, w_enc, bias,
        optionally w_feat; see `example_dfa`) lets each new top example get its DFA by source now, while its row is
        in memory. Only the batch's firings are touched: the top examples and the samples take, per feature, only
        the candidates that beat its current K-th entry, in one grouped merge each. `key_rows`: the sample keys are
        drawn per run of that many rows (default: all of them), seeded by the run's first row, so folding several
        model batches at once (fewer entries that a later batch evicts) draws the same keys as one call each."""
        spec = self.spec
        d = self.d_sae
        n_rows = acts.shape[0] // row_len
        if skip_first:
            acts.view(n_rows, row_len, -1)[:, 0] = 0
        offset = self.rows_done * row_len
        flat = acts.reshape(-1)
        idx, n, f = _firing_cells(acts)  # activations are >= 0, so non-zero means firing
        val = flat.index_select(0, idx)
        self.n_fire += torch.bincount(f, minlength=d)
        self.sum_act += torch.bincount(f, weights=val.double(), minlength=d)
        width = (spec.hist_hi - spec.hist_lo) / spec.hist_bins
        b = torch.log10(val).sub_(spec.hist_lo).div_(width).floor_().clamp_(0, spec.hist_bins - 1).long()
        if self.hist.device.type == "cpu":  # only the bins that got firings
            self.hist.view(-1).index_add_(0, f * spec.hist_bins + b, torch.ones_like(b))
        else:
            self.hist.view(-1).add_(torch.bincount(f * spec.hist_bins + b, minlength=self.hist.numel()))

        cand = _where(val > self.top_val.amin(1).index_select(0, f))
        if len(cand):
            cn, cf = n.index_select(0, cand), f.index_select(0, cand)
            r, c, i = _merge_slots(self.top_val, cf, val.index_select(0, cand), self.top_idx)
            if len(r):
                # the new entries in position order: windows read neighbouring rows, DFA goes row by row
                o = torch.argsort(cn.index_select(0, i) * d + cf.index_select(0, i))
                i = i.index_select(0, o)
                cn, cf = cn.index_select(0, i), cf.index_select(0, i)
                slot = (r * spec.n_top + c).index_select(0, o)  # payloads written by flat slot: one row copy each
                _put(self.top_idx, slot, cn + offset)
                _put(self.top_win, slot, _windows(flat, d, cn, cf, row_len, spec.context))
                if dfa is not None:
                    # the DFA waits for the next update, which evicts about half of a first update's entries
                    # and fewer later: the last update's entries still here get theirs now, from their rows
                    self.finish()
                    self._pending = (slot, cn // row_len, cn % row_len, cf, cn + offset, dfa)
        if dfa is not None and (self._pending is None or self._pending[-1] is not dfa):
            self.finish()  # no new entries: the waiting ones still here get their DFA

        keys = self._sample_keys(n, n_rows, row_len, key_rows or n_rows).to(acts.device)
        floor = self.samp_key.amin(1)
        cand = _where(keys > floor.index_select(0, f))
        cand = cand.index_select(0, _uniform_cut(keys.index_select(0, cand), f.index_select(0, cand), floor,
                                                 spec.n_samples))
        if len(cand):
            cn, cf = n.index_select(0, cand), f.index_select(0, cand)
            r, c, i = _merge_slots(self.samp_key, cf, keys.index_select(0, cand), self.samp_idx)
            if len(r):
                cn, cf = cn.index_select(0, i), cf.index_select(0, i)
                slot = r * spec.n_samples + c
                _put(self.samp_val, slot, val.index_select(0, cand.index_select(0, i)))
                _put(self.samp_idx, slot, cn + offset)
                _put_windows(self.samp_win, slot, flat, d, cn, cf, row_len, spec.context)
        self.n_tokens += n_rows * (row_len - 1 if skip_first else row_len)
        self.rows_done += n_rows

    def _sample_keys(self, n: torch.Tensor, n_rows: int, row_len: int, key_rows: int) -> torch.Tensor:
        """One uniform key per firing (`n [F]`: each firing's position in the batch, ascending), drawn on the CPU
        (the same on every device) per run of `key_rows` rows, seeded by the run's first row of the stream."""
        starts = list(range(0, n_rows, key_rows))
        cuts = torch.searchsorted(n, torch.tensor(starts + [n_rows], device=n.device) * row_len).tolist()
        keys = [torch.rand(hi - lo, generator=torch.Generator().manual_seed(
                    self.spec.seed * 1_000_003 + self.rows_done + r)) for r, lo, hi in zip(starts, cuts, cuts[1:])]
        return torch.cat(keys) if len(keys) > 1 else keys[0]


def n_distance_bins(row_len: int) -> int:
    """Bins of source distance `t - s`: bin b holds distances in [2^b - 1, 2^(b+1) - 1), so 0 | 1-2 | 3-6 | 7-14 ..."""
    return max(1, int(math.floor(math.log2(row_len))) + 1)


def distance_bin(dist: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log2(dist.double() + 1)).long()


def source_facts(
    per_src: torch.Tensor, tokens: torch.Tensor, dest: torch.Tensor, n_bins: int | None = None,
    rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What the role rules (`sae.analysis.roles`) read from one example's DFA by source; the one place the
    induction flag is computed.

    per_src `[P, T]` (DFA of each source position, zero after `dest`), tokens `[P, T]`, dest `[P]`. The BOS source
    (position 0) is left out: it is where heads park attention, not context. Returns per example: dfa_dist `[P, NB]`
    positive DFA mass per distance bin (`distance_bin`), dfa_top_src `[P]` the source with the largest positive DFA
    (-1 if none), dfa_src_tok / dfa_prev_tok `[P]` the token there and the one before it, dfa_induction `[P]` 1 when
    the token before the top source is a copy of the destination token (the source was *preceded by a copy of the
    current token*: "the token after the last time I appeared", the induction pattern) and the source is at least 2
    back (at 1 back, "x . y ." would make every previous-token head look like induction). `n_bins` (default
    `n_distance_bins(T)`): the bins of the whole row when `per_src` holds only its first T sources. With `rows
    [P]`, tokens is `[B, T']` (T' >= T) and example p reads row `rows[p]`.
    """
    P = per_src.shape[0]
    # the positive mass of each usable source: BOS out; sources after `dest` are zero already, and the distance
    # bins never reach past `dest`
    mass = per_src.clamp(min=0)
    mass[:, 0] = 0
    hist = distance_hist(mass, dest, n_bins)
    best_val, best = mass.max(1)  # the first of equal maxima, as among the usable sources alone
    has = best_val > 0
    top = torch.where(has, best, torch.full_like(best, -1))
    flat_tok = tokens.reshape(-1)
    base = (torch.arange(P, device=mass.device) if rows is None else rows) * tokens.shape[1]

    def tok(at: torch.Tensor) -> torch.Tensor:
        return flat_tok.index_select(0, base + at)

    src_tok = torch.where(has, tok(best), torch.full_like(best, -1))
    prev = (best - 1).clamp(min=0)
    prev_tok = torch.where(has & (best >= 1), tok(prev), torch.full_like(best, -1))
    dest_tok = tok(dest)
    induction = has & (best >= 2) & (best < dest - 1) & (prev_tok == dest_tok)
    return {"dfa_dist": hist, "dfa_top_src": top, "dfa_src_tok": src_tok.int(), "dfa_prev_tok": prev_tok.int(),
            "dfa_induction": induction.to(torch.uint8)}


def distance_hist(mass: torch.Tensor, dest: torch.Tensor, n_bins: int | None = None) -> torch.Tensor:
    """mass `[P, T]` (zero after `dest`) summed per distance bin of `dest - s` (`distance_bin`, the last bin
    taking every longer distance) -> `[P, NB]`. Bin k is a run of sources, so it is a difference of two prefix
    sums (taken in float64, so the result matches a direct sum to float32 rounding)."""
    P, T = mass.shape
    nb = n_distance_bins(T) if n_bins is None else n_bins
    csum = torch.zeros(P, T + 1, dtype=torch.float64, device=mass.device)
    torch.cumsum(mass, 1, dtype=torch.float64, out=csum[:, 1:])
    k = torch.arange(nb, device=mass.device)  # csum[:, s] above is the sum of sources < s
    hi = dest.unsqueeze(1) - (2 ** k - 1)  # the nearest source of bin k (distance 2^k - 1) ...
    lo = dest.unsqueeze(1) - (2 ** (k + 1) - 2)  # ... and the farthest (distance 2^(k+1) - 2)
    lo[:, -1] = 0  # the last bin takes every longer distance
    hi_c, lo_c = (hi + 1).clamp(0, T), lo.clamp(0, T)
    out = csum.gather(1, hi_c) - csum.gather(1, lo_c)
    return torch.where(hi_c > lo_c, out, torch.zeros((), dtype=out.dtype)).to(mass.dtype)


DFA_FIELDS = ("dfa_src", "dfa_earlier", "dfa_heads", "dfa_pre", "dfa_dist", "dfa_top_src", "dfa_src_tok",
              "dfa_prev_tok", "dfa_induction")


@torch.no_grad()
def example_dfa(
    pattern: torch.Tensor | Sequence[torch.Tensor], v: torch.Tensor | Sequence[torch.Tensor], tokens: torch.Tensor, w_enc: torch.Tensor, bias: torch.Tensor,
    p_b: torch.Tensor, p_t: torch.Tensor, p_f: torch.Tensor, context: int, w_feat: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """DFA by source of feature `p_f[p]` at position `p_t[p]` of batch row `p_b[p]`, for P examples.

    pattern `[B, H, T, T]`, v `[B, T, H, dh]` (value bias removed; either may be a sequence of B rows, as several
    model batches' rows are, read in place), tokens `[B, T]`, w_enc `[H, dh, d_sae]`,
    bias `[d_sae]` (`encoder_bias_total`); w_feat, optional: the same encoder as `[d_sae, H, dh]`. Returns per
    example: dfa_src `[P, context + 1]` (sources t-context..t, 0 before the row start), dfa_earlier `[P]` (sources
    before the window), dfa_heads `[P, H]`, dfa_pre `[P]` (= sum of all sources + bias), and the `source_facts`
    fields."""
    order, got = _example_dfa_sorted(pattern, v, tokens, w_enc, bias, p_b, p_t, p_f, context, w_feat)
    out = {}
    for k, x in got.items():  # back in the callers' order
        out[k] = torch.empty_like(x)
        out[k][order] = x
    return out


def _example_dfa_sorted(
    pattern: torch.Tensor | Sequence[torch.Tensor], v: torch.Tensor | Sequence[torch.Tensor], tokens: torch.Tensor, w_enc: torch.Tensor, bias: torch.Tensor,
    p_b: torch.Tensor, p_t: torch.Tensor, p_f: torch.Tensor, context: int, w_feat: torch.Tensor | None = None,
    in_order: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`example_dfa` in (row, position) order: returns (order `[P]`, the fields of examples `order[0], order[1],
    ...`), so a caller that writes each example somewhere permutes its targets once instead of every field.
    `in_order`: the examples already come in that order (order is then `arange(P)`)."""
    P, H, T = len(p_b), pattern[0].shape[0], pattern[0].shape[-1]
    dev = p_b.device
    # examples in (row, position) order: a block of them shares a row and needs only the sources up to its last
    # position (attention is causal), so on average half the sources are computed
    order = torch.arange(P, device=dev) if in_order else torch.argsort(p_b * T + p_t, stable=True)
    sb, st, sf = (x.index_select(0, order) for x in (p_b, p_t, p_f))
    if w_feat is None:  # the encoder columns of the features at hand, feature-major (no lasting copy of W_enc)
        uf, sf = torch.unique(sf, return_inverse=True)
        w_feat = torch.index_select(w_enc.reshape(-1, w_enc.shape[-1]), 1, uf).T.contiguous().view(len(uf), H, -1)
    dtype = v[0].dtype
    src = torch.zeros(P, T, dtype=dtype, device=dev)  # [P, T]: DFA of each source, summed over heads
    heads = torch.empty(P, H, dtype=dtype, device=dev)  # [P, H]: summed over sources
    rows, counts = torch.unique_consecutive(sb, return_counts=True)
    step = max(1, min(512, (1 << 22) // max(1, H * T)))  # examples per block ([H, n, T] of at most 16 MB)
    start = 0
    for b, n in zip(rows.tolist(), counts.tolist()):
        v_b = v[b].permute(1, 2, 0)  # [H, dh, T]
        for lo in range(start, start + n, step):
            hi = min(lo + step, start + n)
            t_sel = st[lo:hi]
            width = int(t_sel[-1]) + 1  # the block's last position: sources after it get no attention
            # every head's values against every chosen feature's encoder slice, weighted by the attention paid
            contrib = torch.bmm(w_feat.index_select(0, sf[lo:hi]).transpose(0, 1), v_b[:, :, :width])  # [H, n, width]
            contrib.mul_(pattern[b].index_select(1, t_sel)[:, :, :width])  # zero for s > t
            src[lo:hi, :width] = contrib.sum(0)
            heads[lo:hi] = contrib.sum(2).T
        start += n
    s_idx = st.unsqueeze(1) + torch.arange(-context, 1, device=dev)
    win = src.gather(1, s_idx.clamp(min=0)) * (s_idx >= 0)
    total = src.sum(1)
    got = {"dfa_src": win, "dfa_earlier": total - win.sum(1), "dfa_heads": heads, "dfa_pre": total + bias.index_select(0, p_f.index_select(0, order))}
    cut = 4096  # source facts in slices: small temporaries
    parts = [source_facts(src[lo : lo + cut], tokens, st[lo : lo + cut], rows=sb[lo : lo + cut])
             for lo in range(0, max(P, 1), cut)]
    got.update({k: torch.cat([x[k] for x in parts]) for k in parts[0]})
    return order, got
