"""Tokenised corpora cached on disk, so a second training run (or benchmark) does not tokenise again.

`cached_token_rows(model, spec, context_size, split)` returns what `corpus_token_rows` returns, reading it from
`<cache>/tokens/<key>.pt` when present (the cache dir dashboards use: `$ATTNSCOPE_CACHE_DIR`, else the platform's
user cache dir). The key covers the corpus (the
embedded corpus's Python version and module file, or every file's path, size and mtime), the tokenizer (the model's
name, vocabulary size and the ids it gives a probe text), the context size, the split and the row limit; anything
that changes the rows changes the key. Set `ATTNSCOPE_CACHE=off` to tokenise every time. It lives in the zoo
because it resolves the name "default" (`sae.zoo.corpus_texts`); the engine only packs the texts it is given.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from sae.engine.activations import CORPUS_SUFFIXES, corpus_token_rows
from sae.engine.safe_io import OutputError, UnsafeFileError, atomic_write_with, safe_torch_load, save_torch

PROBE = "The quick brown fox: def f(x):\n    return x + 1  # ünïcode\n"


def cache_root() -> Path | None:
    """Where tokenised corpora are kept; None when `ATTNSCOPE_CACHE=off` (or another path when it names one)."""
    env = os.environ.get("ATTNSCOPE_CACHE", "")
    if env.lower() in ("off", "0", "none"):
        return None
    if env:
        return Path(env).expanduser()
    from sae.analysis.dashboards.store import cache_root as shared_root

    return shared_root()


def _corpus_fingerprint(spec: str) -> str:
    h = hashlib.sha256(spec.encode())
    if spec in ("default", "attnscope-default"):
        import sae.zoo.corpus as corpus_mod

        h.update(sys.version.encode())
        h.update(Path(corpus_mod.__file__).read_bytes())
        return h.hexdigest()
    path = Path(spec).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def token_cache_key(model, spec: str, context_size: int, split: str, max_rows: int | None) -> str:
    h = hashlib.sha256()
    h.update(_corpus_fingerprint(spec).encode())
    h.update(f"{model.name}\0{getattr(model, 'd_vocab', '')}\0{model.bos_token_id}\0".encode())
    h.update(str(model.encode(PROBE)).encode())
    h.update(f"{context_size}\0{split}\0{max_rows}".encode())
    return h.hexdigest()[:32]


def cached_token_rows(model, spec: str, context_size: int, split: str = "train", max_rows: int | None = None) -> torch.Tensor:
    """`corpus_token_rows(model, corpus_texts(spec, split), ...)`, from the on-disk cache when it holds these rows
    (written there otherwise)."""
    from sae.zoo import corpus_texts, is_default

    def tokenise() -> torch.Tensor:
        return corpus_token_rows(model, corpus_texts(spec, split), context_size, max_rows=max_rows)

    root = cache_root()
    if root is None or not (is_default(spec) or Path(spec).expanduser().exists()):
        return tokenise()
    path = root / "tokens" / f"{token_cache_key(model, spec, context_size, split, max_rows)}.pt"
    if path.is_file():
        try:
            rows = safe_torch_load(path, "token cache entry")
            if isinstance(rows, torch.Tensor) and rows.dim() == 2 and rows.shape[1] == context_size:
                return rows.long()
        except (UnsafeFileError, OSError):  # a damaged cache entry is rebuilt
            pass
    rows = tokenise()
    packed = rows.to(torch.int32 if rows.max() < 2**31 else torch.int64).clone()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda tmp: save_torch(packed, tmp), fsync=False)
    except (OSError, OutputError):
        pass  # a read-only cache: tokenise every time
    return rows
