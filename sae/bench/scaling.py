"""Data-parallel scaling of SAE training on this machine (`attnscope bench train --nproc N`).

For each process count n in 1, 2, 4, ..., N (and N), one whole `attnscope train --nproc n` run over the same
tokens with the same global batch; its trainer-loop tokens/s (rank 0's, over the global batch) and the scaling
efficiency tokens/s(n) / (n x tokens/s(1)). On a machine whose cores or GPUs are shared, the figures say how the
run scales there, not how the code scales.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def process_counts(n_max: int) -> list[int]:
    """1, 2, 4, ... below `n_max`, then `n_max`."""
    out, n = [], 1
    while n < n_max:
        out.append(n)
        n *= 2
    return out + [n_max]


def run_train(model: str, corpus: str, layer: int, architecture: str, d_sae: int, tokens: int, batch_size: int,
              nproc: int, device: str) -> dict[str, Any]:
    """One `attnscope train --nproc n` process: wall seconds and the loop tokens/s it reports."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "workbench.main", "train", "--model", model, "--corpus", corpus,
               "--layers", str(layer), "--architecture", architecture, "--width", str(d_sae), "--tokens", str(tokens),
               "--batch-size", str(batch_size), "--device", device, "--checkpoint-every", "0", "--nproc", str(nproc),
               "--out", str(Path(tmp) / "run"), "--json"]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"nproc": nproc, "tokens_per_s": None, "seconds": seconds, "error": (lines or ["failed"])[-1]}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return {"nproc": nproc, "tokens_per_s": None, "seconds": seconds, "error": "no JSON report"}
    return {"nproc": nproc, "tokens_per_s": report.get("tokens_per_s"), "seconds": seconds,
            "process_tokens_per_s": tokens / seconds}


def bench_scaling(model: str, corpus: str, layer: int, architecture: str, d_sae: int, tokens: int,
                  batch_size: int, n_max: int, device: str) -> dict[str, Any]:
    """Tokens/s for each process count up to `n_max`, and each count's efficiency against one process."""
    runs = [run_train(model, corpus, layer, architecture, d_sae, tokens, batch_size, n, device)
            for n in process_counts(n_max)]
    base = runs[0].get("tokens_per_s")
    for r in runs:
        r["efficiency"] = (r["tokens_per_s"] / (r["nproc"] * base)) if base and r.get("tokens_per_s") else None
    return {"model": model, "layer": layer, "architecture": architecture, "d_sae": d_sae, "tokens": tokens,
            "batch_size": batch_size, "device": device, "scaling": runs}
