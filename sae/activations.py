"""Turning text into token rows and token rows into hook_z activations."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def pack_tokens(
    docs: Iterable[str],
    encode: Callable[[str], list[int]],
    context_size: int,
    bos_id: int,
    eos_id: int | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """Tokenise `docs` and pack them into rows `[rows, context_size]` with BOS at position 0 of every row.

    Documents are concatenated (separated by `eos_id` when given) and cut into chunks of `context_size - 1`
    tokens; a trailing partial chunk is dropped.
    """
    if context_size < 2:
        raise ValueError(f"context size must be at least 2, got {context_size}")
    body = context_size - 1
    stream: list[int] = []
    rows: list[list[int]] = []
    for doc in docs:
        stream.extend(encode(doc))
        if eos_id is not None:
            stream.append(eos_id)
        while len(stream) >= body:
            rows.append([bos_id] + stream[:body])
            del stream[:body]
            if max_rows is not None and len(rows) >= max_rows:
                return torch.tensor(rows, dtype=torch.long)
    if not rows:
        return torch.empty(0, context_size, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)
