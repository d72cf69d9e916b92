"""`attnscope bench select`: the top-k selection against `torch.topk` and a plain matmul of the same shape.

For each shape (batch, d_in -> d_sae, k), timed by `clock` (CPU time on a one-thread CPU) as the best of interleaved
rounds: the time of `x @ W_enc` (the step's encoder matmul, and the FLOP/s
yardstick), of selecting each row's top k of its `[batch, d_sae]` pre-activations with `torch.topk`, with the
two-stage selection attnscope used before (`previous_topk_rows`) and with `sae.engine.selection.topk_rows`, each also
as a multiple of the matmul's time; whether each selected exactly `torch.topk`'s set; and the whole hand-written
top-k step (loss, gradients, AuxK on a tenth of the latents; no Adam) with each selection, as its dense-equivalent
FLOP/s (five matmuls per step) over the matmul's.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.selection import topk_rows
from sae.engine.training.steps import topk_step_grads

SHAPES = ((4096, 128, 1024, 32), (4096, 128, 1024, 24), (4096, 256, 2048, 32))


def previous_topk_rows(pre: torch.Tensor, k: int, group: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection attnscope used before (the baseline here): maxima of `group` adjacent columns, the top k of
    those, then the top k of their `k * group` candidates."""
    b, n = pre.shape
    if n % group or n // group <= k or pre.device.type != "cpu":
        return pre.topk(k, dim=-1)
    _, groups = pre.view(b, n // group, group).amax(-1).topk(k, dim=-1, sorted=False)
    cand = (groups.unsqueeze(-1) * group + torch.arange(group, device=pre.device)).reshape(b, k * group)
    vals, j = pre.gather(1, cand).topk(k, dim=-1)
    return vals, cand.gather(1, j)


def torch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pre.topk(k, dim=-1)


SELECTIONS: dict[str, Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "torch.topk": torch_topk, "previous two-stage": previous_topk_rows, "topk_rows": topk_rows}


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """The clock timings use: on a CPU running one torch thread, this process's CPU time (a shared machine's other
    processes then do not count); otherwise wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "process CPU time", time.process_time
    return "wall time", time.perf_counter


def best_times(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, float]:
    """Per name, the fastest of `rounds` timed calls (after one warm-up call each), in seconds; the calls are
    interleaved round by round, so a slow spell of the machine hits every function alike."""
    _, now = clock(device)
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = now()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], now() - t)
    return best


def same_selection(pre: torch.Tensor, got: tuple[torch.Tensor, torch.Tensor],
                   want: tuple[torch.Tensor, torch.Tensor]) -> tuple[bool, float]:
    """Whether `got` is `torch.topk`'s answer `want`: equal values in the same order, each chosen index distinct and
    holding its value; and the fraction of rows choosing exactly `want`'s indices (less than 1 only where a row
    has equal values, among which `torch.topk`'s own choice is unspecified)."""
    (v, i), (wv, wi) = got, want
    valid = torch.equal(v, wv) and torch.equal(pre.gather(1, i), wv) and bool(
        (i.sort(-1).values.diff(dim=-1) > 0).all())
    same_rows = (i.sort(-1).values == wi.sort(-1).values).all(-1).float().mean().item()
    return valid, same_rows


def bench_select(shapes: tuple[tuple[int, int, int, int], ...] = SHAPES, rounds: int = 10,
                 device: str | torch.device = "cpu", seed: int = 0) -> dict[str, Any]:
    """Times per shape (see the module docstring); seconds and ratios to the matmul."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "device": str(dev), "clock": clock(dev)[0],
                           "shapes": []}
    for batch, d_in, d_sae, k in shapes:
        x = torch.randn(batch, d_in, generator=g).to(dev)
        sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z", architecture="topk", k=k)).to(dev)
        w = sae.W_enc.detach()
        pre = torch.addmm(sae.b_enc.detach(), x, w)
        dead = torch.zeros(d_sae, dtype=torch.bool, device=dev)
        dead[: d_sae // 10] = True
        fns: dict[str, Callable[[], Any]] = {"matmul": lambda: torch.mm(x, w)}
        for name, fn in SELECTIONS.items():
            fns[name] = lambda fn=fn: fn(pre, k)
            fns[f"step: {name}"] = lambda fn=fn: topk_step_grads(sae, x, k, dead, max(1, d_in // 2), 1 / 32, select=fn)
        t = best_times(fns, rounds, dev)
        t_mm = t["matmul"]
        want = pre.topk(k, dim=-1)
        row: dict[str, Any] = {"batch": batch, "d_in": d_in, "d_sae": d_sae, "k": k, "matmul_s": t_mm,
                               "matmul_gflops": 2.0 * batch * d_in * d_sae / t_mm / 1e9, "select": {}}
        for name, fn in SELECTIONS.items():
            same, same_rows = same_selection(pre, fn(pre, k), want)
            row["select"][name] = {"seconds": t[name], "matmuls": t[name] / t_mm, "same_as_topk": same,
                                   "rows_with_topk_indices": same_rows, "step_s": t[f"step: {name}"],
                                   "step_fraction_of_matmul": 5 * t_mm / t[f"step: {name}"]}
        out["shapes"].append(row)
    return out
