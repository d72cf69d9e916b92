"""Activation caches: hook_z of chosen layers written once to sharded safetensors, read back by training with no
model pass.

Layout of a cache directory:
- `manifest.json`: format, model, hook names, the z convention, layers, d_in, n_heads, context size, rows, tokens,
  corpus name and hash (`rows_digest` of the token rows, the same fingerprint checkpoints carry), dtype, shards;
- `shard_00000.safetensors`, ...: per layer `blocks.L.attn.hook_z [rows, context, d_in]` (fp16, bf16 or fp32) and
  `tokens [rows, context]` (int32), rows in corpus order.

`CacheSource` serves training exactly as `ZSource` serves it from the model: each epoch visits every row in the same
seeded random order (rows drawn across all shards), `rows_per_pass` rows per chunk. With an fp32 cache, training
from the cache therefore matches training from the model on the same rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.engine.activations import ZSource, rows_digest
from sae.engine.errors import AttnscopeError
from sae.engine.jobs import CancelToken, Progress, ProgressFn
from sae.engine.models import z_hook_name
from sae.engine.schema import FileFormatError, Int, List, OneOf, Obj, Optional, Str, check, read_json
from sae.engine.safe_io import DirLock, atomic_write_text, atomic_write_with, check_writable_dir, save_safetensors

MANIFEST = "manifest.json"
CACHE_FORMAT = "attnscope-activation-cache-1"
Z_CONVENTION = ("attnscope hook_z: per-head z with the value bias removed (b_V folded into b_O, as HookedTransformer "
                "with fold_value_biases), heads flattened head-major: d_in = n_heads * d_head")
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}


class CacheError(AttnscopeError, ValueError):
    """An activation cache is missing, damaged or does not fit the run; one line for the user."""


@dataclass
class Manifest:
    model: str
    layers: list[int]
    d_in: int
    n_heads: int | None
    context_size: int
    rows: int
    dtype: str
    corpus: str
    corpus_hash: str
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"file", "rows"}
    hooks: list[str] = field(default_factory=list)
    z_convention: str = Z_CONVENTION
    format: str = CACHE_FORMAT

    @property
    def tokens(self) -> int:
        return self.rows * self.context_size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens}


MANIFEST_SPEC = Obj(
    required={"format": OneOf(CACHE_FORMAT), "model": Str(), "layers": List(Int(min=0), min_len=1),
              "d_in": Int(min=1, max=1 << 20), "context_size": Int(min=2), "rows": Int(min=1),
              "dtype": OneOf("float16", "bfloat16", "float32"),
              "shards": List(Obj({"file": Str(nonempty=True), "rows": Int(min=1)}), min_len=1)},
    optional={"n_heads": (Optional(Int(min=1)), None), "corpus": (Str(), ""), "corpus_hash": (Str(), ""),
              "hooks": (List(Str()), []), "z_convention": (Str(), Z_CONVENTION)},
)


def read_manifest(path: str | Path) -> Manifest:
    """The cache's manifest, checked by `MANIFEST_SPEC` and for consistency (shard rows add up to `rows`, shard
    files are plain names inside the cache folder, `d_in` splits into `n_heads`); one-line errors otherwise."""
    d = Path(path).expanduser()
    file = d / MANIFEST
    try:
        raw = read_json(file, "activation cache manifest")
    except FileNotFoundError:
        raise CacheError(f"{d} is not an activation cache (no {MANIFEST}); write one with `attnscope cache`") from None
    if isinstance(raw, dict) and "format" in raw and raw["format"] != CACHE_FORMAT:
        raise CacheError(f"{d} holds an activation cache of an unknown format {str(raw.get('format'))[:40]!r}")
    m = check(raw, MANIFEST_SPEC, file)
    for i, shard in enumerate(m["shards"]):
        name = shard["file"]
        if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name) or "\x00" in name:
            raise FileFormatError(file, f"shards[{i}].file", "a file name inside the cache folder", name)
    total = sum(s["rows"] for s in m["shards"])
    if total != m["rows"]:
        raise FileFormatError(file, "shards", f"shards whose rows add up to rows ({m['rows']})", total)
    if m["n_heads"] is not None and m["d_in"] % m["n_heads"]:
        raise FileFormatError(file, "n_heads", f"a divisor of d_in ({m['d_in']})", m["n_heads"])
    return Manifest(**{k: m[k] for k in Manifest.__dataclass_fields__})


class _InOrder(ZSource):
    """A ZSource that reads rows in corpus order (for writing caches)."""

    def _next_rows(self) -> torch.Tensor:
        n = self.rows.shape[0]
        take = torch.arange(self.pos, min(self.pos + self.rows_per_pass, n))
        self.pos += take.numel()
        return self.rows[take]


def write_cache(
    model,
    token_rows: torch.Tensor,
    layers: list[int],
    out_dir: str | Path,
    dtype: str = "float16",
    rows_per_shard: int = 1024,
    rows_per_pass: int = 32,
    corpus: str = "",
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> Manifest:
    """Write hook_z of `layers` for every row of `token_rows [rows, context]` to `out_dir` (see the module doc).

    Shards are written whole (temporary file renamed into place) and the manifest last, so a directory with a
    manifest is a complete cache. Raises CacheError for bad input, `Cancelled` when stopped.
    """

    if dtype not in DTYPES:
        raise CacheError(f"dtype must be one of float16, bfloat16, float32 (got {dtype!r})")
    if token_rows.dim() != 2 or token_rows.shape[0] == 0:
        raise CacheError("no token rows to cache")
    if rows_per_shard <= 0 or rows_per_pass <= 0:
        raise CacheError("rows_per_shard and rows_per_pass must be positive")
    layers = sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise CacheError(f"layer {layer} is outside the model (layers 0..{model.n_layers - 1})")
    out = Path(out_dir).expanduser()
    if (out / MANIFEST).exists():
        raise CacheError(f"{out} already holds an activation cache; pick another directory")
    check_writable_dir(out, "cache --out")  # a file, a read-only place: one line before the model runs
    with DirLock(out, what="attnscope cache"):  # a second `attnscope cache` into the same --out is refused
        if (out / MANIFEST).exists():  # written by a run that finished while this one waited
            raise CacheError(f"{out} already holds an activation cache; pick another directory")
        return _write_cache_locked(model, token_rows, layers, out, dtype, rows_per_shard, rows_per_pass, corpus,
                                   on_progress, cancel)


def _write_cache_locked(model, token_rows: torch.Tensor, layers: list[int], out: Path, dtype: str,
                        rows_per_shard: int, rows_per_pass: int, corpus: str, on_progress: ProgressFn | None,
                        cancel: CancelToken | None) -> Manifest:
    n_rows, ctx = token_rows.shape
    torch_dtype = DTYPES[dtype]
    manifest = Manifest(
        model=model.name, layers=layers, d_in=model.d_z, n_heads=model.n_heads, context_size=ctx, rows=n_rows,
        dtype=str(torch_dtype).removeprefix("torch."), corpus=corpus, corpus_hash=rows_digest(token_rows),
        hooks=[z_hook_name(layer) for layer in layers],
    )
    done = 0
    for shard_i, start in enumerate(range(0, n_rows, rows_per_shard)):
        rows = token_rows[start : start + rows_per_shard]
        src = _InOrder(model, rows, layers, rows_per_pass, skip_bos=False)  # the cache holds every position
        parts = []
        while src.pos < rows.shape[0]:
            if cancel is not None:
                cancel.check()
            parts.append(src.next_chunk().cpu())
            done += min(src.rows_per_pass, rows.shape[0])
        z = torch.cat(parts, dim=1)  # [n_layers, rows * ctx, d_in]
        tensors = {z_hook_name(layer): z[i].reshape(rows.shape[0], ctx, -1).to(torch_dtype).contiguous()
                   for i, layer in enumerate(layers)}
        tensors["tokens"] = rows.to(torch.int32).contiguous()
        name = f"shard_{shard_i:05d}.safetensors"
        # whole or absent, never through a link, a full disk one line (OutputError)
        atomic_write_with(out / name, lambda tmp: save_safetensors(tensors, tmp, metadata={"format": CACHE_FORMAT}),
                          follow_symlink=False)
        manifest.shards.append({"file": name, "rows": int(rows.shape[0])})
        if on_progress is not None:
            on_progress(Progress("cache", min(start + rows.shape[0], n_rows) * ctx, n_rows * ctx, unit="tokens",
                                 stage=f"shard {shard_i + 1}/{-(-n_rows // rows_per_shard)}"))
    atomic_write_text(out / MANIFEST, json.dumps(manifest.to_dict(), indent=2) + "\n", follow_symlink=False)
    return manifest


class CacheSource(ZSource):
    """Chunks of cached hook_z for training: `next_chunk() -> [n_layers, rows_per_pass * context, d_in]` float32,
    rows in the seeded order `ZSource` would use, read across shards (memory-mapped)."""

    def __init__(self, path: str | Path, layers: list[int], rows_per_pass: int = 32, seed: int = 0) -> None:
        from safetensors import safe_open

        self.dir = Path(path).expanduser()
        self.manifest = read_manifest(self.dir)
        missing = [layer for layer in layers if layer not in self.manifest.layers]
        if missing:
            raise CacheError(f"the cache in {self.dir} holds layers {self.manifest.layers}, not {missing[0]}")
        n = self.manifest.rows
        # ZSource's bookkeeping over row ids instead of token rows
        self.rows = torch.arange(n).unsqueeze(1)
        self.layers = list(layers)
        self.rows_per_pass = max(1, min(rows_per_pass, n))
        self.seed = seed
        self.epoch = 0
        self.pos = 0
        self._order = self._epoch_order(0)
        self._files = []
        self._starts = []
        start = 0
        m = self.manifest
        real_dir = self.dir.resolve()
        for shard in m.shards:
            f = self.dir / shard["file"]
            if f.is_symlink() or f.resolve().parent != real_dir:  # a cache reads only inside its own folder
                raise CacheError(f"the cache in {self.dir}: shard {shard['file']!r} is not a file inside it")
            if not f.is_file():
                raise CacheError(f"the cache in {self.dir} lacks its shard {shard['file']}")
            try:
                handle = safe_open(str(f), framework="pt")
                shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
            except Exception as exc:  # noqa: BLE001 - safetensors' errors of a damaged file: all one line
                raise CacheError(f"the cache's shard {f} is damaged ({type(exc).__name__})") from None
            want = {z_hook_name(layer): [shard["rows"], m.context_size, m.d_in] for layer in m.layers}
            want["tokens"] = [shard["rows"], m.context_size]
            for name, shape in want.items():
                if shapes.get(name) != shape:
                    raise CacheError(f"the cache's shard {f}: {name} has shape {shapes.get(name)}, its manifest "
                                     f"says {shape}")
            self._files.append(handle)
            self._starts.append(start)
            start += int(shard["rows"])
        if start != n:
            raise CacheError(f"the cache's shards hold {start} rows, its manifest says {n}")
        self._starts_t = torch.tensor(self._starts)

    # what the Trainer reads from a source
    @property
    def d_in(self) -> int:
        return self.manifest.d_in

    @property
    def n_heads(self) -> int | None:
        return self.manifest.n_heads

    @property
    def model_name(self) -> str:
        return self.manifest.model

    @property
    def digest(self) -> str:
        return self.manifest.corpus_hash

    @property
    def context_size(self) -> int:
        return self.manifest.context_size

    def next_chunk(self) -> torch.Tensor:
        """`[n_layers, rows_per_pass * (context - 1), d_in]`: like `ZSource.next_chunk`, the BOS position of each
        row is left out (the cache itself holds every position)."""
        ids = self._next_rows().flatten()  # [rows_per_pass] row ids
        ctx, d_in = self.manifest.context_size, self.manifest.d_in
        n = ctx - 1
        out = torch.empty(len(self.layers), ids.numel() * n, d_in)
        shard_of = torch.searchsorted(self._starts_t, ids, right=True) - 1
        for j, (row, shard) in enumerate(zip(ids.tolist(), shard_of.tolist())):
            local = row - self._starts[shard]
            f = self._files[shard]
            for i, layer in enumerate(self.layers):
                block = f.get_slice(z_hook_name(layer))[local : local + 1]
                out[i, j * n : (j + 1) * n] = block.reshape(ctx, d_in)[1:].float()
        return out

    def tokens(self) -> torch.Tensor:
        """`[rows, context]` the cached token rows, in corpus order."""
        return torch.cat([f.get_tensor("tokens").long() for f in self._files])
