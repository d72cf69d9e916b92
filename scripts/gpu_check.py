"""The GPU check of issue 14: one call, under 10 minutes, on a machine with a CUDA device.

1. runs the CUDA tests (tests/engine/test_cuda.py: training in fp32 and bf16 autocast lowers the loss, the SAE saves and
   loads, the hand-written step matches autograd on CUDA; and `--resident-saes` moving SAEs onto the GPU on demand);
2. builds a GPT-2-Small-shaped model with random weights locally (d_model 768, 12 heads x 64, 12 layers, vocab
   50257; nothing downloaded) and measures SAE training at 768 -> 24576, batch 4096, in fp32 and under bf16
   autocast: trainer-loop tokens/s, the SAE step's TFLOP/s (dense-equivalent: 5 matmuls of 2 B d_in d_sae FLOPs)
   as a fraction of a same-shape bf16 matmul, peak memory (`torch.cuda.max_memory_allocated`);
3. runs `attnscope bench train --device cuda` on that model;
4. runs `attnscope bench scale --shape gpt2-small --device cuda` (every analysis at the paper's shape, issue 21);
and writes everything as JSON to `$OUT/gpu_check.json` (or --out DIR), printing it too.

Usage: `python scripts/gpu_check.py` on the GPU machine; `python scripts/gpu_check.py --device cpu --tiny
--skip-tests` shows on any machine that it starts (tests/bench/test_gpu_check.py does that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 - after the repository root is on sys.path

FULL = {"n_layer": 12, "d_model": 768, "n_head": 12, "n_ctx": 1024, "vocab": 50257, "d_sae": 24576,
        "batch": 4096, "context": 128, "steps": 8}
TINY = {"n_layer": 2, "d_model": 64, "n_head": 4, "n_ctx": 64, "vocab": 512, "d_sae": 512, "batch": 256,
        "context": 32, "steps": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, reps: int) -> float:
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / reps


def run_tests(timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/engine/test_cuda.py",
           "tests/bench/test_scale.py::test_resident_saes_move_to_the_gpu_on_demand"]
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - t,
            "tail": "\n".join(lines[-30:]) if done.returncode else ""}


def step_efficiency(d_in: int, d_sae: int, batch: int, device: torch.device, architecture: str, autocast: bool,
                    reps: int) -> dict[str, Any]:
    """One SAE step as the trainer runs it (fp32: the hand-written backward; bf16: autograd under autocast), its
    dense-equivalent TFLOP/s against same-shape `[B, d_in] x [d_in, d_sae]` matmuls in bf16 and fp32."""
    from sae.engine.autoencoder import SAE, SAEConfig
    from sae.engine.training.config import TrainConfig
    from sae.engine.training.steps import (
        remove_parallel_grad,
        sae_forward_train,
        standard_loss,
        standard_step_grads,
        topk_step_grads,
    )
    from sae.engine.training.loop import make_optimizer

    k = 32
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z", architecture=architecture,
                        k=k if architecture == "topk" else None)).to(device)
    opt = make_optimizer(sae, TrainConfig(layers=[0]))
    x = torch.randn(batch, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: d_sae // 10] = True

    def step() -> None:
        if not autocast:
            if architecture == "topk":
                topk_step_grads(sae, x, k, dead, max(1, d_in // 2), 1 / 32)
            else:
                standard_step_grads(sae, x, 1.0)
        else:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _, f, x_hat = sae_forward_train(sae, x)
                if architecture == "topk":
                    loss = (x_hat.float() - x).pow(2).sum(-1).mean()
                else:
                    loss = standard_loss(x, f.float(), x_hat.float(), 1.0)[0]
            loss.backward()
        remove_parallel_grad(sae)
        opt.step()
        sae.set_decoder_norm_to_unit()

    a16 = x.to(torch.bfloat16)
    w16 = sae.W_enc.detach().to(torch.bfloat16)
    w32 = sae.W_enc.detach()
    flops_mm = 2.0 * batch * d_in * d_sae
    t_bf16 = min(timed(lambda: torch.mm(a16, w16), device, reps) for _ in range(2))
    t_fp32 = min(timed(lambda: torch.mm(x, w32), device, reps) for _ in range(2))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_step = min(timed(step, device, reps) for _ in range(2))
    step_tflops = 5 * flops_mm / t_step / 1e12
    out = {"architecture": architecture, "autocast_bf16": autocast, "step_ms": t_step * 1e3,
           "step_tflops_dense_equivalent": step_tflops, "matmul_bf16_tflops": flops_mm / t_bf16 / 1e12,
           "matmul_fp32_tflops": flops_mm / t_fp32 / 1e12,
           "fraction_of_bf16_matmul": step_tflops / (flops_mm / t_bf16 / 1e12),
           "tokens_per_s_sae_step_only": batch / t_step}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def loop_figures(model, shape: dict, device: torch.device) -> list[dict[str, Any]]:
    """Trainer-loop tokens/s (model pass + SAE step, steady state) and peak memory, fp32 and bf16 autocast."""
    from sae.bench.training import _random_rows, _time_training

    rows = _random_rows(model, max(64, 4 * shape["batch"] // shape["context"]), shape["context"])
    out = []
    for autocast in (False, True):
        if autocast and device.type != "cuda":
            continue  # autocast is a CUDA path in the trainer
        for arch in ("standard", "topk"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t = _time_training(model, rows, [1], shape["d_sae"], shape["batch"], shape["steps"], 2, autocast,
                               architecture=arch)
            r = {"architecture": arch, "autocast_bf16": autocast,
                 "loop_tokens_per_s": shape["batch"] * shape["steps"] / t}
            if device.type == "cuda":
                r["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            out.append(r)
    # the model pass on a background thread (TrainConfig.prefetch), top-k fp32: does it overlap on this machine?
    for prefetch in (0, 4):
        t = _time_training(model, rows, [1], shape["d_sae"], shape["batch"], shape["steps"], 2, False,
                           architecture="topk", prefetch=prefetch)
        out.append({"architecture": "topk", "autocast_bf16": False, "prefetch": prefetch,
                    "loop_tokens_per_s": shape["batch"] * shape["steps"] / t})
    return out


def run_json(cmd: list[str], timeout: int) -> dict[str, Any]:
    """An attnscope `--json` command in its own process: its JSON, or {"error": its last stderr line}."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout)


def cli_bench(model_dir: Path, shape: dict, device: str, timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "workbench.main", "bench", "train", "--model", str(model_dir), "--width",
           str(shape["d_sae"]), "--batch-size", str(shape["batch"]), "--steps", str(shape["steps"]), "--device",
           device, "--process-tokens", "0", "--no-reference", "--json"]
    return run_json(cmd, timeout)


def scale_bench(shape: str, device: str, timeout: int) -> dict[str, Any]:
    """`attnscope bench scale --shape SHAPE --device DEVICE --json` in its own process."""
    cmd = [sys.executable, "-m", "workbench.main", "bench", "scale", "--shape", shape, "--device", device, "--json"]
    return run_json(cmd, timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (to show the script starts, e.g. on a CPU)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-scale", action="store_true", help="skip `attnscope bench scale` (step 4)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="directory for gpu_check.json (default: $OUT)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device on this machine (use --device cpu --tiny to check the script starts)",
              file=sys.stderr)
        return 2
    shape = TINY if args.tiny else FULL
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "torch": torch.__version__, "device": str(device), "shape": shape,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda, "flop_convention": "SAE step = 5 matmuls of 2 * batch * d_in * d_sae FLOPs",
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    if not args.skip_tests:
        report["tests"] = run_tests(timeout=240)
        print(f"tests: {report['tests']['summary']}", flush=True)
    from sae.bench.training import random_gpt2_dir
    from sae.engine.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model_dir = random_gpt2_dir(Path(tmp) / "gpt2-small-random", shape["n_layer"], shape["d_model"],
                                    shape["n_head"], shape["n_ctx"], shape["vocab"])
        model = load_model(str(model_dir), device=str(device))
        report["model"] = {"n_layers": model.n_layers, "d_in": model.d_z, "n_heads": model.n_heads}
        report["sae_step"] = [step_efficiency(model.d_z, shape["d_sae"], shape["batch"], device, arch, ac,
                                              reps=10 if not args.tiny else 2)
                              for arch in ("standard", "topk") for ac in ((False, True) if device.type == "cuda"
                                                                          else (False,))]
        print(json.dumps(report["sae_step"], indent=1), flush=True)
        report["trainer_loop"] = loop_figures(model, shape, device)
        print(json.dumps(report["trainer_loop"], indent=1), flush=True)
        del model
        report["bench_train_cli"] = cli_bench(model_dir, shape, str(device), timeout=240)
    if not args.skip_scale:
        report["bench_scale"] = scale_bench("tiny" if args.tiny else "gpt2-small", str(device), timeout=300)
        print(json.dumps({k: report["bench_scale"].get(k) for k in ("timings", "targets", "error")}, indent=1),
              flush=True)
    report["seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(text + "\n")
    failed = (report.get("tests", {}).get("returncode") not in (None, 0) or "error" in report["bench_train_cli"]
              or "error" in report.get("bench_scale", {}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
