"""Where built dashboards live and how they are written: the cache directory keyed by model and SAE fingerprints,
the registry that finds a build without loading the model, and the files (one safetensors file of `[d_sae, ...]`
tensors plus a JSON index; a partial pair while a build runs).

Nothing here imports torch at module level, so finding and reading a built dashboard stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae.engine.errors import AttnscopeError
from sae.engine.safe_io import atomic_write_text, atomic_write_with, check_writable_dir, save_safetensors
from sae.engine.z_convention import Z_CONVENTION

if TYPE_CHECKING:
    import torch

    from sae.analysis.dashboards.scan import DashboardScan, DashboardSpec
    from sae.engine.autoencoder import SAE
    from sae.engine.models import LoadedModel

INDEX = "index.json"


DATA = "dashboards.safetensors"


REGISTRY = "registry.json"
PARTIAL = "partial.safetensors"


PARTIAL_INDEX = "partial.json"


FORMAT_VERSION = 3  # 3: feature logit tables through the vocabulary-centred W_U


class DashboardError(AttnscopeError, ValueError):
    """Bad dashboard request (not built, feature out of range, ...); one line for the user."""


def cache_root() -> Path:
    """`$ATTNSCOPE_CACHE_DIR` when set, else the platform's user cache dir for attnscope."""
    env = os.environ.get("ATTNSCOPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("attnscope"))


def source_key(spec: str, default_path: Path | None = None) -> str:
    """A cheap identity for a model or SAE spec without loading it: for a local path, its absolute path plus the
    newest modification time and total size of the files under it; otherwise the spec itself (a hub name)."""
    p = Path(default_path) if default_path is not None else Path(spec).expanduser()
    if not p.exists():
        return spec
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    stats = [f.stat() for f in files]
    newest = max((st.st_mtime_ns for st in stats), default=0)
    size = sum(st.st_size for st in stats)
    return f"{p.resolve()}:{newest}:{size}"


def _registry_key(model_key: str, sae_key: str, layer: int) -> str:
    """Entries made under another z convention are never found, so they are rebuilt rather than shown stale."""
    return f"{Z_CONVENTION}|{model_key}|{sae_key}|{layer}"


def register_built(model_key: str, sae_key: str, layer: int, directory: Path, root: Path | None = None) -> None:
    """Remember which directory holds the dashboards of (model, SAEs, layer), so a later lookup needs no model."""
    reg_path = (cache_root() if root is None else Path(root)) / "dashboards" / REGISTRY
    reg_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        reg = json.loads(reg_path.read_text())
    except (OSError, ValueError):
        reg = {}
    if not isinstance(reg, dict):  # a damaged registry is only a cache: start it again
        reg = {}
    reg[_registry_key(model_key, sae_key, layer)] = str(Path(directory).resolve())
    atomic_write_text(reg_path, json.dumps(reg, indent=1))


def lookup_built(model_key: str, sae_key: str, layer: int, root: Path | None = None) -> Path | None:
    reg_path = (cache_root() if root is None else Path(root)) / "dashboards" / REGISTRY
    try:
        d = json.loads(reg_path.read_text()).get(_registry_key(model_key, sae_key, layer))
    except (OSError, ValueError, AttributeError):  # missing, damaged, or not a JSON object
        return None
    if not isinstance(d, str):
        return None
    return Path(d) if d and is_built(Path(d)) else None


def build_command(layer: int) -> str:
    return f"attnscope dashboards build --layer {layer}"


def is_built(directory: Path) -> bool:
    return (directory / INDEX).is_file() and (directory / DATA).is_file()


def readable_build(directory: Path) -> dict[str, Any] | None:
    """The index of a finished build whose files open (index JSON parses, data header reads), else None: a
    damaged cache counts as not built, so the next build replaces it without `--force`."""
    from safetensors import safe_open

    directory = Path(directory)
    if not is_built(directory):
        return None
    try:
        idx = json.loads((directory / INDEX).read_text())
        if not isinstance(idx, dict):
            return None
        with safe_open(str(directory / DATA), framework="np") as f:
            f.keys()
    except Exception:  # noqa: BLE001 - JSON, I/O and safetensors header errors all mean "damaged"
        return None
    return idx


# ---- fingerprints: one directory per (model, SAE, layer) ------------------------------------------------


# keyed by the bridge object itself, held weakly: an entry dies with its model, so a new model that happens to
# get a freed model's id() never inherits its fingerprint
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _hash_tensors(h: "hashlib._Hash", tensors: list[torch.Tensor | None]) -> None:
    import torch

    for t in tensors:
        if t is None:
            continue
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())


def model_fingerprint(model: LoadedModel) -> str:
    """12 hex digits from the model's shape, the z convention and a few weight tensors (embeddings, W_V, W_O)."""
    b = model.bridge
    try:
        cached = _FINGERPRINTS.get(b)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None:
        return cached
    h = hashlib.sha1()
    h.update(f"{model.n_layers}/{model.d_model}/{model.n_heads}/{model.d_head}/{model.d_vocab}".encode())
    h.update(Z_CONVENTION.encode())  # dashboards built under another z convention live elsewhere
    _hash_tensors(h, [b.W_E[:512], getattr(b, "W_pos", None), b.W_V, b.W_O])
    digest = h.hexdigest()[:12]
    try:
        _FINGERPRINTS[b] = digest
    except TypeError:
        pass
    return digest


# SAE -> (the weights' version counters, digest): hashing a 24576-wide SAE takes a while, and every dashboard and
# cache look-up asks; an in-place change of a weight bumps its version counter, so the digest is computed again
_SAE_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def sae_fingerprint(sae: SAE) -> str:
    """12 hex digits from the SAE's config and all its weights (remembered per SAE object until a weight changes)."""
    tensors = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sae.threshold]
    c = sae.cfg
    # torch's in-place version counter: the one public-enough sign that a weight was edited in place
    stamp = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors) + (  # noqa: SLF001
        c.architecture, c.d_in, c.d_sae, c.hook_name, c.k, c.apply_b_dec_to_input)
    try:
        memo = _SAE_FINGERPRINTS.get(sae)
    except TypeError:  # not weak-referenceable
        memo = None
    if memo is not None and memo[0] == stamp:
        return memo[1]
    digest = _sae_digest(sae)
    try:
        _SAE_FINGERPRINTS[sae] = (stamp, digest)
    except TypeError:
        pass
    return digest


def _sae_digest(sae: SAE) -> str:
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


# ---- writing --------------------------------------------------------------------------------------------


def save_partial(directory: Path, scan: DashboardScan, meta: dict[str, Any]) -> None:
    """The scan so far (`partial.safetensors` + `partial.json`), replaced atomically; a later build resumes from it."""

    check_writable_dir(directory, "dashboard cache folder")
    tensors = scan.tensors()
    atomic_write_with(directory / PARTIAL, lambda tmp: save_safetensors(tensors, tmp), follow_symlink=False)
    meta = dict(meta, n_tokens_seen=scan.n_tokens, rows_done=scan.rows_done)
    atomic_write_text(directory / PARTIAL_INDEX, json.dumps(meta), follow_symlink=False)


def _window_tokens(rows: torch.Tensor, idx: torch.Tensor, context: int) -> torch.Tensor:
    """Token ids around global positions `idx [...]` of `rows [R, T]` -> `[..., W]`, -1 outside the row / for idx -1."""
    import torch

    T = rows.shape[1]
    flat = rows.flatten()
    offs = torch.arange(-context, context + 1)
    t = (idx % T).unsqueeze(-1) + offs
    valid = (t >= 0) & (t < T) & (idx >= 0).unsqueeze(-1)
    g = (idx.unsqueeze(-1) + offs).clamp(0, flat.numel() - 1)
    got = flat.index_select(0, g.reshape(-1)).view(g.shape)
    return torch.where(valid, got, torch.full_like(got, -1)).to(torch.int32)


def write_final(
    directory: Path, model: LoadedModel, sae: SAE, layer: int, spec: DashboardSpec, rows: torch.Tensor,
    scan: DashboardScan, dfa: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], shares: torch.Tensor,
    stats: dict[str, float],
) -> None:
    """The finished build: every feature's tensors in one safetensors file and the JSON index (with `stats`)."""
    import torch

    # quantile samples sorted by activation (descending; equal ones by position); empty slots last
    sv = torch.where(scan.samp_idx >= 0, scan.samp_val, torch.full_like(scan.samp_val, -1.0))
    by_pos = scan.samp_idx.argsort(dim=1, stable=True)
    order = by_pos.gather(1, sv.gather(1, by_pos).argsort(dim=1, descending=True, stable=True))
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
    ids = torch.cat([top_tok.flatten(), samp_tok.flatten(), logits["top_ids"].flatten().int(),
                     logits["bot_ids"].flatten().int()])
    used = torch.bincount(ids[ids >= 0].long()).nonzero().squeeze(1).tolist()  # the ids seen, ascending
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
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **stats,
        "vocab": vocab,
    }
    check_writable_dir(directory, "dashboard cache folder")
    data = {k: v.contiguous() for k, v in tensors.items()}
    # the umask's mode (another user sharing the cache can read it), never through a link, a full disk one line
    atomic_write_with(directory / DATA, lambda tmp: save_safetensors(data, tmp), follow_symlink=False)
    atomic_write_text(directory / INDEX, json.dumps(index), follow_symlink=False)
