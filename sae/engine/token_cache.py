"""Tokenised corpora cached on disk, so a second training run (or benchmark) does not tokenise again.

`cached_token_rows(model, spec, context_size, split)` returns what `corpus_token_rows` returns, reading it from
`$ATTNSCOPE_CACHE/tokens/<key>.pt` (default `~/.cache/attnscope`) when present. The key covers the corpus (the
embedded corpus's Python version and module file, or every file's path, size and mtime), the tokenizer (the model's
name, vocabulary size and the ids it gives a probe text), the context size, the split and the row limit; anything
that changes the rows changes the key. Set `ATTNSCOPE_CACHE=off` to tokenise every time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path

import torch

from sae.engine.activations import CORPUS_SUFFIXES, corpus_token_rows

PROBE = "The quick brown fox: def f(x):\n    return x + 1  # ünïcode\n"


def cache_root() -> Path | None:
    env = os.environ.get("ATTNSCOPE_CACHE", "")
    if env.lower() in ("off", "0", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attnscope"


def _corpus_fingerprint(spec: str) -> str:
    h = hashlib.sha256(spec.encode())
    if spec == "default":
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
    """`corpus_token_rows(...)`, from the on-disk cache when it holds these rows (written there otherwise)."""
    root = cache_root()
    if root is None or not (spec == "default" or Path(spec).expanduser().exists()):
        return corpus_token_rows(model, spec, context_size, split=split, max_rows=max_rows)
    path = root / "tokens" / f"{token_cache_key(model, spec, context_size, split, max_rows)}.pt"
    if path.is_file():
        try:
            rows = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(rows, torch.Tensor) and rows.dim() == 2 and rows.shape[1] == context_size:
                return rows.long()
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            pass
    rows = corpus_token_rows(model, spec, context_size, split=split, max_rows=max_rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        torch.save(rows.to(torch.int32 if rows.max() < 2**31 else torch.int64).clone(), tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: tokenise every time
    return rows
