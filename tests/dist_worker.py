"""One rank of a data-parallel training run for tests/training/test_distributed.py (started as a subprocess with torchrun's
environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT).

Usage: python tests/dist_worker.py SPEC.json, SPEC = {"model_dir", "out_dir", "cfg": TrainConfig fields, "n_rows",
"kill": [rank, step] or null, "resume": bool, "device": "cpu" (gloo) or "cuda" (nccl, one GPU per rank)}. A rank named in "kill" SIGKILLs itself after that step's report.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

from support import token_rows


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    from sae.engine.training.distributed import init_from_env, shutdown
    from sae.engine.jobs import Progress
    from sae.engine.models import load_model
    from sae.engine.training.loop import TrainConfig, Trainer

    sync, device = init_from_env(spec.get("device", "cpu"))
    model = load_model(spec["model_dir"], device=str(device))
    cfg = TrainConfig(**spec["cfg"])
    rows = token_rows(model, spec["n_rows"], cfg.context_size)
    kill = spec.get("kill")

    def on_progress(p: Progress) -> None:
        if kill and sync.rank == kill[0] and p.note == "step" and p.stage.startswith(f"step {kill[1]}/"):
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = Trainer(model, rows, cfg, spec["out_dir"], on_progress=on_progress, device=device, sync=sync)
    if spec.get("resume"):
        trainer.resume()
    trainer.run()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
