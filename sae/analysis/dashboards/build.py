"""Building dashboards: one scan of held-out rows feeds every layer's `DashboardScan`, checkpointed so an
interrupted build resumes exactly; then the static parts (head shares, logit effects) and the files.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import torch
from safetensors.torch import load_file

from sae.analysis.dashboards.scan import DFA_FIELDS, DashboardScan, DashboardSpec
from sae.analysis.dashboards.store import (
    FORMAT_VERSION,
    PARTIAL,
    PARTIAL_INDEX,
    DashboardError,
    dashboard_dir,
    readable_build,
    save_partial,
    write_final,
)
from sae.analysis.dfa import capture_until_z, decoder_by_head, encoder_by_head, head_shares, pattern_hook_name, v_hook_name
from sae.engine.activations import rows_digest
from sae.engine.autoencoder import SAE
from sae.engine.jobs import Cancelled, CancelToken, Progress, ProgressFn, check_cancelled
from sae.engine.models import LoadedModel, z_hook_name
from sae.engine.safe_io import check_writable_dir

LOGIT_NOTE = (
    "Logit effect = W_dec[i] split per head, through W_O, centred and multiplied by the final LayerNorm weight, then "
    "the vocabulary-centred W_U (W_U minus its mean over the vocabulary, as the paper and attnscope's induction DLA "
    "use it: a direction that raises every logit alike scores 0). Approximation: the final LayerNorm's per-token scale (a positive factor, so it cannot change the ranking) and "
    "all later layers are ignored; it is the feature's direct path to the logits."
)


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
    W_U = W_U - W_U.mean(dim=1, keepdim=True)  # vocabulary-centred: logit relative to the average token
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


def encode_acts(
    sae: SAE, z: torch.Tensor, w_enc: torch.Tensor, enc_bias: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The SAE's activations of z `[N, d_in]` -> `[N, d_sae]` (>= 0): `sae.encode_pre` as one fused addmm, then
    the architecture's activation (`activation_`, which may reuse pre's memory; top-k by exact selection). `out`
    `[N, d_sae]`, optional: where to put them (returned)."""
    pre = torch.addmm(enc_bias, z, w_enc, out=out)  # == sae.encode_pre(z), one fused call
    acts = sae.arch.activation_(pre, sae.cfg, sae.threshold)
    if out is not None and acts.data_ptr() != out.data_ptr():
        out.copy_(acts)
        return out
    return acts


def finish_scans(scans: Iterable[DashboardScan]) -> None:
    """The last DFA each scan holds back (`DashboardScan.finish`): the end of the scan's bookkeeping."""
    for sc in scans:
        sc.finish()


FOLD_BYTES = 256 << 20  # the most that a fold of several model batches holds (activations, patterns, values)


def fold_batches(model: LoadedModel, saes: dict[int, SAE], row_len: int, batch_rows: int, fold_bytes: int) -> int:
    """How many model batches each layer's scan folds in at once: as many as `fold_bytes` holds (at least one).

    Folding b batches at once lets in only the entries that beat the others of those b batches: entries that the
    next batches would evict get no window, DFA or merge (over a scan of n batches about K (1 + ln n/b) entries
    per feature instead of K (1 + ln n)). It costs memory: the activations, attention patterns and values of b
    batches (and the previous fold's patterns and values, whose DFA waits one fold: `DashboardScan.update`)."""
    per_row = sum(row_len * (sae.cfg.d_sae * 4 + model.n_heads * row_len * 4 + model.n_heads * model.d_head * 4)
                  for sae in saes.values())
    return max(1, fold_bytes // max(1, per_row * batch_rows))


@dataclass
class BuildResult:
    directory: Path
    status: str  # built | cached
    n_tokens: int
    scan_seconds: float = 0.0
    total_seconds: float = 0.0
    tokens_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["directory"] = str(self.directory)
        return d


Texts = Union[Iterable[str], Callable[[], Iterable[str]]]


def heldout_rows(
    model: LoadedModel, n_tokens: int, context_size: int, docs: Texts | None = None, corpus: str = "default"
) -> torch.Tensor:
    """Held-out text packed into `[rows, context_size]` (BOS first), enough rows for `n_tokens` (or all there is).

    `docs` (the texts, or a function returning them, called only when rows are needed) wins over `corpus`, which
    is then read as a file or directory; the embedded held-out split ("default") is supplied by the caller
    (`sae.zoo.corpus_texts("default", "heldout")`)."""
    from sae.engine.activations import pack_tokens

    if callable(docs):
        docs = docs()
    if docs is None:
        from sae.engine.activations import read_corpus

        docs = read_corpus(corpus)
    max_rows = max(1, math.ceil(n_tokens / context_size))
    return pack_tokens(docs, model.encode, context_size, model.bos_token_id, max_rows=max_rows)


def build_dashboards(
    model: LoadedModel,
    sae: SAE,
    layer: int | None = None,
    spec: DashboardSpec | None = None,
    docs: Texts | None = None,
    directory: Path | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    batch_rows: int = 32,
    checkpoint_s: float = 20.0,
    force: bool = False,
    fold_bytes: int = FOLD_BYTES,
) -> BuildResult:
    """Scan held-out rows once and write the dashboards of every feature of `sae` (see the module docstring).

    `on_progress` gets `Progress(job="dashboards", unit="tokens", stage=...)` after every batch. `cancel` is checked
    every batch; a cancelled build saves its state and raises `Cancelled`; calling again with the same spec
    resumes. An existing finished build is returned as "cached" unless `force`.
    """
    layer = sae.cfg.layer if layer is None else layer
    dirs = None if directory is None else {layer: Path(directory)}
    return build_layers(model, {layer: sae}, spec, docs, dirs, on_progress, cancel, batch_rows, checkpoint_s, force,
                        fold_bytes)[layer]


def build_layers(
    model: LoadedModel,
    saes: dict[int, SAE],
    spec: DashboardSpec | None = None,
    docs: Texts | None = None,
    directories: dict[int, Path] | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    batch_rows: int = 32,
    checkpoint_s: float = 20.0,
    force: bool = False,
    fold_bytes: int = FOLD_BYTES,
) -> dict[int, BuildResult]:
    """`build_dashboards` for several layers from one scan: each model pass stops after the deepest layer's
    attention and feeds every layer's SAE, so building all layers costs about one forward pass per row. Each
    layer's scan folds in `fold_batches` model batches at a time (`fold_bytes`: the memory that may take)."""
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
    rows_hash = rows_digest(rows)
    scans: dict[int, DashboardScan] = {}
    metas: dict[int, dict[str, Any]] = {}
    for layer in todo:
        metas[layer] = {"spec": asdict(spec), "rows_hash": rows_hash, "layer": layer, "version": FORMAT_VERSION}
        scans[layer] = DashboardScan(saes[layer].cfg.d_sae, spec, model.n_heads, T, device=model.device)
        d = dirs[layer]
        if (d / PARTIAL_INDEX).is_file() and (d / PARTIAL).is_file() and not force:
            try:
                old = json.loads((d / PARTIAL_INDEX).read_text())
                if isinstance(old, dict) and all(old.get(k) == v for k, v in metas[layer].items()):
                    scans[layer].load(load_file(str(d / PARTIAL)), old["n_tokens_seen"], old["rows_done"])
            except Exception:  # noqa: BLE001 - a damaged partial scan: start this layer afresh
                scans[layer] = DashboardScan(saes[layer].cfg.d_sae, spec, model.n_heads, T, device=model.device)
    total = rows.shape[0] * T
    deepest = todo[-1]
    z_names = tuple(z_hook_name(layer) for layer in todo if layer != deepest)
    z_names += tuple(n for layer in todo for n in (pattern_hook_name(layer), v_hook_name(layer)))
    enc = {layer: (saes[layer].W_enc.detach(), saes[layer].encoder_bias_total.detach(), model.z_offset(layer))
           for layer in todo}
    # the scan's state, the batch's activations, patterns and values stay on the model's device
    enc_heads = {layer: (encoder_by_head(saes[layer], model.n_heads).detach().float(),
                         saes[layer].encoder_bias_total.detach().float()) for layer in todo}
    row = min(sc.rows_done for sc in scans.values())
    done_at_start = row * T
    t_scan = last_ckpt = time.perf_counter()

    def report(stage: str) -> None:
        if on_progress is None:
            return
        done = row * T
        el = time.perf_counter() - t_scan
        rate = (done - done_at_start) / el if el > 0 else 0.0
        on_progress(Progress("dashboards", done, total, unit="tokens", stage=stage, rate=rate,
                             eta_s=(total - done) / rate if rate > 0 else None))

    def save_all() -> None:
        for layer, sc in scans.items():
            if sc.rows_done > 0:
                save_partial(dirs[layer], sc, metas[layer])

    # model batches wait for a fold: per layer, its activations (in one buffer) and the rows' patterns / values
    n_fold = fold_batches(model, {layer: saes[layer] for layer in todo}, T, batch_rows, fold_bytes)
    bufs: dict[int, torch.Tensor] = {}
    pending: dict[int, dict[str, Any]] = {}

    def fold() -> None:
        for layer, p in pending.items():
            dfa = {"pattern": p["pattern"], "v": p["v"], "tokens": torch.cat(p["tokens"]),
                   "w_enc": enc_heads[layer][0], "bias": enc_heads[layer][1]}
            acts = p["acts"] if "acts" in p else bufs[layer][: p["n"]]
            scans[layer].update(acts.float(), T, dfa=dfa, key_rows=batch_rows)
        pending.clear()

    try:
        with torch.inference_mode():
            while row < rows.shape[0]:
                check_cancelled(cancel)
                # never straddle a layer's resume point, so each layer restarts exactly where it stopped
                stop = min([row + batch_rows] + [sc.rows_done for sc in scans.values() if sc.rows_done > row])
                batch = rows[row:stop].to(model.device)
                got = capture_until_z(model, batch, deepest, z_names)
                # fold several batches at once only while every layer is at the same place (not while one that
                # stopped earlier in an interrupted build catches up)
                grouped = n_fold > 1 and all(sc.rows_done == scans[todo[0]].rows_done for sc in scans.values())
                for layer in todo:
                    sc, sae = scans[layer], saes[layer]
                    if sc.rows_done > row:  # this layer got further before an interruption
                        continue
                    w_enc, enc_bias, b_v = enc[layer]
                    z = (got[z_hook_name(layer)] - b_v).reshape(-1, sae.cfg.d_in).to(w_enc.dtype)  # value bias out
                    p = pending.setdefault(layer, {"n": 0, "pattern": [], "v": [], "tokens": []})
                    if grouped:
                        if layer not in bufs:
                            bufs[layer] = torch.empty(n_fold * batch_rows * T, sae.cfg.d_sae, dtype=w_enc.dtype,
                                                      device=model.device)
                        encode_acts(sae, z, w_enc, enc_bias, out=bufs[layer][p["n"] : p["n"] + z.shape[0]])
                    else:
                        p["acts"] = encode_acts(sae, z, w_enc, enc_bias)
                    p["n"] += z.shape[0]
                    v = got[v_hook_name(layer)]
                    v = v - (b_v if v.shape[-2] == b_v.shape[0] else b_v[:: b_v.shape[0] // v.shape[-2]])
                    if v.shape[-2] != model.n_heads:  # grouped-query attention
                        v = v.repeat_interleave(model.n_heads // v.shape[-2], dim=-2)
                    p["pattern"] += got[pattern_hook_name(layer)].float().unbind(0)  # rows, read in place
                    p["v"] += v.float().unbind(0)
                    p["tokens"].append(batch)
                row += batch.shape[0]
                del got
                if not grouped or len(pending[todo[-1]]["tokens"]) >= n_fold or row >= rows.shape[0]:
                    fold()
                    if time.perf_counter() - last_ckpt > checkpoint_s:
                        save_all()
                        last_ckpt = time.perf_counter()
                report("scanning")
            finish_scans(scans.values())
    except Cancelled:  # asked between batches: every waiting batch is whole, so fold it in before saving
        with torch.inference_mode():
            fold()
        save_all()
        raise
    except BaseException:  # interrupted or failed: keep what was folded in, so the next call resumes from there
        save_all()
        raise
    scan_s = time.perf_counter() - t_scan
    rate = (total - done_at_start) / scan_s if scan_s > 0 else 0.0
    for layer in todo:
        report(f"writing layer {layer}")
        sae, sc = saes[layer], scans[layer].to("cpu")
        sc.sort_top()
        with torch.no_grad():
            dfa = {name: getattr(sc, name) for name in DFA_FIELDS}
            logits = logit_effects(model, sae, layer, spec.n_logits)
            shares = head_shares(sae, model.n_heads).detach().float().cpu()
        write_final(dirs[layer], model, sae, layer, spec, rows, sc, dfa, logits, shares,
                     {"scan_seconds": scan_s, "tokens_per_s": rate, "layers_in_scan": todo, "logit_note": LOGIT_NOTE})
        for name in (PARTIAL, PARTIAL_INDEX):
            (dirs[layer] / name).unlink(missing_ok=True)
        results[layer] = BuildResult(dirs[layer], "built", sc.n_tokens, scan_s, time.perf_counter() - t_start, rate)
    return results
