"""Timing a dashboard build (`attnscope bench dashboards`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae.analysis.dashboards import DashboardSpec, Texts, build_layers
from sae.engine.autoencoder import SAE
from sae.engine.jobs import ProgressFn
from sae.engine.models import LoadedModel


def benchmark_build(model: LoadedModel, saes: dict[int, SAE], n_tokens: int = 200_000, batch_rows: int = 32,
                    on_progress: ProgressFn | None = None, docs: Texts | None = None) -> dict[str, Any]:
    """Build dashboards of `saes` ({layer: SAE}, one scan) from `n_tokens` held-out tokens into a temporary
    directory and time it.

    Returns tokens/s of the scan (the part that grows with the corpus) and of the whole build, plus the machine's
    load average and torch's thread count, since a busy machine slows the numbers down."""
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as tmp:
        dirs = {layer: Path(tmp) / f"layer-{layer}" for layer in saes}
        res = build_layers(model, saes, DashboardSpec(n_tokens=n_tokens), docs, directories=dirs, on_progress=on_progress,
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
