"""scripts/gpu_check.py starts and writes its report on any machine (tiny shapes on the CPU): the GPU run is then
one call away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_runs_on_cpu_with_tiny_shapes(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--skip-tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["model"]["d_in"] == 64
    steps = {(s["architecture"], s["autocast_bf16"]): s for s in report["sae_step"]}
    assert set(steps) == {("standard", False), ("topk", False)}
    for s in steps.values():
        assert s["step_tflops_dense_equivalent"] > 0 and s["fraction_of_bf16_matmul"] > 0
    assert {r["architecture"] for r in report["trainer_loop"]} == {"standard", "topk"}
    assert all(r["loop_tokens_per_s"] > 0 for r in report["trainer_loop"])
    assert [r["architecture"] for r in report["bench_train_cli"]["runs"]] == ["standard", "topk"]
    assert report["bench_scale"]["shape"] == "tiny" and report["bench_scale"]["timings"]["scan"]["tokens"] > 0


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path)}, check=False)
    assert done.returncode == 2 and done.stderr.strip().startswith("gpu_check: error: no CUDA device")
