"""Data-parallel training (sae.engine.training.distributed) on this machine: 2 ranks over gloo on the CPU, compared with an
independent one-process run of the same global batch over the same tokens (no process group, no all-reduce)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sae.engine.training.distributed import (
    DistributedError,
    check_launch,
    check_split,
    comm_estimate,
)
from sae.engine.formats import load_sae
from sae.engine.training.loop import CHECKPOINT_FILE, TrainConfig, Trainer, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support, dist_worker
from support import CTX, N_ROWS, ROOT, assert_same_weights, base_cfg, launch, rank_pids, token_rows



@pytest.fixture(scope="module")
def rows(tiny_model):
    return token_rows(tiny_model, N_ROWS, CTX)


def one_process(model, rows, out: Path, **kw):
    """The reference: one process, global batch 64, same two data shards, no process group."""
    events: list = []
    trainer = Trainer(model, rows, TrainConfig(**base_cfg(**kw)), out, on_progress=events.append)
    outcome = trainer.run()
    trainer.events = events
    return outcome, trainer


def test_two_ranks_equal_one_process_with_the_global_batch_through_a_resample(tiny_model_dir, tiny_model, rows,
                                                                                tmp_path):
    outcome, trainer = one_process(tiny_model, rows, tmp_path / "one")
    assert all(u.n_resamples >= 1 for u in trainer.units)
    assert outcome.metrics[0]["n_resamples"] >= 1
    assert max(e.metrics.get("resampled", 0) for e in trainer.events) > 0  # features were revived
    spec = {"model_dir": str(tiny_model_dir), "out_dir": str(tmp_path / "two"), "cfg": base_cfg(), "n_rows": N_ROWS}
    assert launch(spec, tmp_path) == [0, 0]
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    saved = load_sae(tmp_path / "two" / "blocks.0.attn.hook_z").cfg.extra["training"]
    assert saved["world_size"] == 2 and saved["global_batch"] == 64 and saved["batch_size"] == 64
    assert saved["data_shards"] == 2 and saved["n_resamples"] >= 1 and saved["tokens_done"] == 64 * 9
    cfg_json = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert cfg_json["world_size"] == 2
    # the comparison can fail: one data shard (a different split of the same tokens into batches) differs
    _, other = one_process(tiny_model, rows, tmp_path / "one_shard", data_shards=1)
    diff = (other.units[0].sae.W_dec - trainer.units[0].sae.W_dec).abs().max().item()
    assert diff > 1e-3


def test_a_killed_rank_leaves_a_checkpoint_that_resumes_on_another_process_count(tiny_model_dir, tiny_model, rows,
                                                                                  tmp_path):
    c = base_cfg(total_tokens=64 * 10, checkpoint_every=3)
    spec = {"model_dir": str(tiny_model_dir), "out_dir": str(tmp_path / "run"), "cfg": c, "n_rows": N_ROWS,
            "kill": [1, 5]}
    codes = launch(spec, tmp_path, timeout=60)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert state["step"] == 3 and sorted(int(k) for k in state["data_files"]) == [0, 1]
    # resume in one process (data_shards stays 2): ends where an uninterrupted one-process run ends
    resumed = Trainer(tiny_model, rows, TrainConfig(**c), tmp_path / "run")
    resumed.resume()
    assert resumed.step == 3
    assert resumed.run().status == "finished"
    one_process(tiny_model, rows, tmp_path / "straight", total_tokens=64 * 10, checkpoint_every=3)
    assert_same_weights(tmp_path / "straight", tmp_path / "run")


def test_bad_setups_are_one_line_errors():
    with pytest.raises(DistributedError, match="exceeds the .* CPU cores"):
        check_launch((os.cpu_count() or 1) + 1, "cpu")
    with pytest.raises(DistributedError, match="not divisible by 3"):
        check_split(64, 3, 3)
    with pytest.raises(DistributedError, match="do not divide among 3"):
        check_split(64, 2, 3)
    check_split(64, 4, 2)


def test_communication_estimate_closed_form():
    # GPT-2 Small width: 2 * 768 * 24576 + 24576 + 768 fp32 values = 151.1 MB; ring over 8 moves 2*7/8 of it
    e = comm_estimate(768, 24576, 4096, 8, link_gb_s=100.0, step_tflops=100.0)
    values = 2 * 768 * 24576 + 24576 + 768
    assert e["grad_mb"] == pytest.approx(values * 4 / 1e6)
    assert e["comm_s"] == pytest.approx(values * 4 * 2 * 7 / 8 / 100e9)
    assert e["compute_s"] == pytest.approx(10 * 4096 * 768 * 24576 / 100e12)
    # the ratio is 1.6 (N-1)/N * FLOP/s / (batch * bandwidth), whatever the widths (biases aside)
    wide = comm_estimate(2048, 65536, 4096, 8, link_gb_s=100.0, step_tflops=300.0)
    assert wide["ratio"] == pytest.approx(1.6 * 7 / 8 * 300e12 / (4096 * 100e9), rel=2e-3)


def test_cli_nproc_launches_torchrun_and_refuses_bad_setups(tiny_model_dir, tmp_path, capsys):
    from sae.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ROOT / "tests" / "conftest.py").read_text() * 4)
    common = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--width", "32",
              "--context-size", "32", "--tokens", "1024"]
    assert main([*common, "--out", str(tmp_path / "a"), "--nproc", str((os.cpu_count() or 1) + 1)]) == 2
    assert "exceeds the" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "a"), "--nproc", "2", "--batch-size", "127"]) == 2
    assert "not divisible by 2" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATTNSCOPE_DIST_TIMEOUT": "60"}
    done = subprocess.run([sys.executable, "-m", "workbench.main", *common, "--batch-size", "128", "--nproc", "2",
                           "--out", str(tmp_path / "b"), "--json"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "finished"  # one report (rank 0's), not two
    saved = load_sae(tmp_path / "b" / "blocks.0.attn.hook_z").cfg.extra["training"]
    assert saved["world_size"] == 2 and saved["global_batch"] == 128 and saved["tokens_done"] == 1024


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_cli_nproc_2_with_a_rank_sigkilled_says_one_line_and_resume_finishes(tmp_path):
    """`attnscope train --nproc 2` on the embedded default, rank 1 SIGKILLed mid-run from outside (after the first
    checkpoint): the launcher's output is one error line naming rank 1, the signal and --resume (no traceback,
    not torchrun's report), exit 2; the same command with --resume then finishes the run."""
    import time

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ROOT / "tests" / "conftest.py").read_text() * 8)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "workbench.main", "train", "--corpus", str(corpus), "--layers", "0",
               "--width", "32", "--context-size", "32", "--batch-size", "128", "--rows-per-pass", "4",
               "--buffer-batches", "2", "--tokens", str(128 * 160), "--checkpoint-every", "2", "--nproc", "2",
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATTNSCOPE_DIST_TIMEOUT": "60",
           "ATTNSCOPE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / CHECKPOINT_FILE).exists():  # mid-run: a checkpoint to resume from, most steps to go
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.02)
        victims = rank_pids(proc.pid, 1)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    errors = [x for x in lines if x.startswith("attnscope:")]
    assert len(errors) == 1, err[-3000:]
    assert "rank 1" in errors[0] and "SIGKILL" in errors[0] and "--resume" in errors[0], errors[0]
    assert errors[0] == lines[-1]
    for noise in ("Traceback", "[rank", "torch.distributed.elastic", "ChildFailedError", "Root Cause", "exitcode"):
        assert noise not in err, err[-3000:]
    assert len(lines) < 15, err  # the run's few lines of set-up, then the one error (torchrun's report was ~81)
    state = load_checkpoint(out / CHECKPOINT_FILE)
    assert 0 < state["step"] < 160
    done = subprocess.run(command + ["--resume", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "finished"
    saved = load_sae(out / "blocks.0.attn.hook_z").cfg.extra["training"]
    assert saved["tokens_done"] == 128 * 160 and saved["world_size"] == 2


def test_bench_scaling_counts_and_refuses_too_many_processes(capsys):
    from sae.bench.scaling import process_counts
    from sae.cli import main

    assert process_counts(1) == [1] and process_counts(3) == [1, 2, 3] and process_counts(8) == [1, 2, 4, 8]
    assert main(["bench", "train", "--nproc", str((os.cpu_count() or 1) + 1), "--device", "cpu"]) == 2
    assert "exceeds the" in capsys.readouterr().err


def test_data_shards_from_an_activation_cache_equal_shards_from_the_model(tiny_model, rows, tmp_path):
    from sae.engine.activation_cache import CacheSource, write_cache

    write_cache(tiny_model, rows, [0, 1], tmp_path / "acts", dtype="float32", rows_per_shard=20)
    c = TrainConfig(**base_cfg(architecture="topk", k=4, total_tokens=64 * 6))
    Trainer(tiny_model, rows, c, tmp_path / "model").run()
    c = TrainConfig(**base_cfg(architecture="topk", k=4, total_tokens=64 * 6))
    source = CacheSource(tmp_path / "acts", [0, 1], c.rows_per_pass, c.seed)
    Trainer(None, None, c, tmp_path / "cache", source=source).run()
    assert_same_weights(tmp_path / "model", tmp_path / "cache")
