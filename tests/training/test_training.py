"""Training runs on the tiny model: outputs, one pass for many layers, resume exactness, NaN, cancel, resampling."""

from __future__ import annotations

import json

import pytest
import torch

from sae.engine.formats import load_sae
from sae.engine.jobs import CancelToken, Progress
from sae.engine.training.loop import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TrainingError,
    load_checkpoint,
    train_saes,
)
from support import CTX, count_passes


def cfg(**kw) -> TrainConfig:
    base = dict(layers=[0], architecture="standard", normalize_activations="none", d_sae=64, batch_size=64, context_size=CTX, total_tokens=64 * 12, rows_per_pass=4,
                buffer_batches=4, warmup_steps=3, checkpoint_every=0, log_every=1, lr=3e-3, l1_coeff=0.01)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_outputs_and_reduces_loss(tiny_model, rows, tmp_path):
    events: list[Progress] = []
    saes = train_saes(tiny_model, rows, cfg(total_tokens=64 * 30), tmp_path, on_progress=events.append)
    steps = [e for e in events if e.note == "step"]
    assert steps[-1].metrics["mse"] < steps[0].metrics["mse"]
    for key in ("loss", "l0", "explained_variance", "dead_fraction", "lr"):
        assert key in steps[-1].metrics
    assert steps[-1].rate > 0 and steps[-1].eta_s is not None
    assert steps[-1].job == "train" and steps[-1].unit == "tokens" and steps[-1].total == 64 * 30
    assert steps[-1].stage == "step 30/30" and steps[-1].done == 64 * 30
    assert events[-1].note == "finished"
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["layers"] == [0] and saved["d_sae"] == 64
    loaded = load_sae(tmp_path / "blocks.0.attn.hook_z")
    torch.testing.assert_close(loaded.W_dec, saes[0].W_dec)
    torch.testing.assert_close(saes[0].W_dec.norm(dim=-1), torch.ones(64))
    assert loaded.cfg.extra["training"]["l1_coeff"] == 0.01


def test_many_layers_one_pass_equals_separate_runs(tiny_model, rows, tmp_path):
    with count_passes(tiny_model) as passes:
        both = train_saes(tiny_model, rows, cfg(layers=[0, 2]), tmp_path / "both")
        n_both = passes["n"]
        passes["n"] = 0
        only2 = train_saes(tiny_model, rows, cfg(layers=[2]), tmp_path / "only2")
        n_one = passes["n"]
    assert n_both == n_one  # two layers cost the model passes of one
    # same tokens in the same order: the layer-2 SAE is the same whether trained alone or beside layer 0
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(both[2], name), getattr(only2[2], name), atol=1e-6, rtol=1e-5)


def test_resume_ends_with_the_same_weights(tiny_model, rows, tmp_path):
    c = dict(layers=[0, 1], total_tokens=64 * 16, resample_every=6, resample_window=3, checkpoint_every=5)
    straight = train_saes(tiny_model, rows, cfg(**c), tmp_path / "a")
    cancel = CancelToken()

    def stop_at_7(info: Progress) -> None:
        if info.note == "step" and info.stage == "step 7/16":
            cancel.cancel()

    trainer = Trainer(tiny_model, rows, cfg(**c), tmp_path / "b", on_progress=stop_at_7, cancel=cancel)
    outcome = trainer.run()
    assert outcome.status == "cancelled" and outcome.step == 7
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_FILE)["step"] == 7
    resumed = train_saes(tiny_model, rows, cfg(**c), tmp_path / "b", resume=True)
    for layer in (0, 1):
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(getattr(straight[layer], name), getattr(resumed[layer], name)), (layer, name)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_prefetching_changes_nothing_and_resumes_exactly(tiny_model, rows, tmp_path, arch):
    """The model pass on a background thread (`prefetch`) hands out the same chunks in the same order: the same
    weights as without it, and a run stopped mid-way (chunks made ahead but not yet used) resumes to them too."""
    c = dict(layers=[0, 1], total_tokens=64 * 16, checkpoint_every=5, architecture=arch, k=4, rows_per_pass=2)
    plain = train_saes(tiny_model, rows, cfg(**c), tmp_path / "plain")
    ahead = train_saes(tiny_model, rows, cfg(**c, prefetch=3), tmp_path / "ahead")
    cancel = CancelToken()

    def stop_at_7(info: Progress) -> None:
        if info.note == "step" and info.stage == "step 7/16":
            cancel.cancel()

    trainer = Trainer(tiny_model, rows, cfg(**c, prefetch=3), tmp_path / "b", on_progress=stop_at_7, cancel=cancel)
    assert trainer.run().step == 7
    resumed = train_saes(tiny_model, rows, cfg(**c, prefetch=2), tmp_path / "b", resume=True)
    for layer in (0, 1):
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(getattr(plain[layer], name), getattr(ahead[layer], name)), (layer, name)
            assert torch.equal(getattr(plain[layer], name), getattr(resumed[layer], name)), (layer, name)


class CountingSource:
    """chunk i is torch.full((1, 2, 3), i); the state is the next i."""

    def __init__(self) -> None:
        self.i = 0

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, s: dict) -> None:
        self.i = s["i"]

    def next_chunk(self) -> torch.Tensor:
        self.i += 1
        return torch.full((1, 2, 3), float(self.i - 1))


def test_prefetcher_state_is_that_of_the_first_chunk_not_handed_out():
    import time

    from sae.engine.activations import Prefetcher

    src = CountingSource()
    p = Prefetcher(src, depth=3)
    assert p.next_chunk()[0, 0, 0] == 0
    deadline = time.monotonic() + 10
    while len(p._queue) < 3 and time.monotonic() < deadline:  # the worker runs 3 chunks ahead
        time.sleep(0.01)
    assert src.i == 4 and p.state_dict() == {"i": 1}  # chunks 1..3 made, none handed out
    assert p.next_chunk()[0, 0, 0] == 1
    p.load_state_dict({"i": 1})  # back one chunk: the queue is dropped, the source rewound
    assert [p.next_chunk()[0, 0, 0].item() for _ in range(3)] == [1, 2, 3]
    p.close()


def test_a_failing_model_pass_on_the_prefetch_thread_is_raised_in_training():
    from sae.engine.activations import Prefetcher

    class Broken:
        def state_dict(self) -> dict:
            return {}

        def next_chunk(self):
            raise RuntimeError("out of memory in the forward pass")

    p = Prefetcher(Broken(), depth=2)
    with pytest.raises(RuntimeError, match="out of memory"):
        p.next_chunk()
    p.close()


def planted_chunk_failure(monkeypatch, error: BaseException) -> list[str]:
    """Make the model pass of the training data source fail with `error` on its second chunk; the names of the
    threads it failed on."""
    import threading

    from sae.engine.activations import ZSource

    original, calls, threads = ZSource.next_chunk, [0], []

    def next_chunk(self):
        calls[0] += 1
        if calls[0] == 2:
            threads.append(threading.current_thread().name)
            raise error
        return original(self)

    monkeypatch.setattr(ZSource, "next_chunk", next_chunk)
    return threads


def train_with_prefetch(tiny_model_dir, corpus, tmp_path) -> int:
    from sae.cli import main

    return main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--width", "32",
                 "--context-size", "16", "--batch-size", "32", "--rows-per-pass", "2", "--buffer-batches", "2",
                 "--tokens", str(32 * 40), "--prefetch", "2", "--out", str(tmp_path / "run"), "--device", "cpu"])


def test_a_bug_on_the_prefetch_thread_is_one_bug_line_with_its_traceback_logged(tiny_model_dir, corpus, tmp_path,
                                                                                 monkeypatch, capsys):
    """An unexpected error inside the --prefetch thread follows the bug rule: one line `attnscope: bug: ...
    (traceback in PATH)`, exit 1, no traceback on the terminal; the log holds the traceback with the thread's own
    frames."""
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ATTNSCOPE_TRACEBACK", raising=False)
    threads = planted_chunk_failure(monkeypatch, KeyError("planted-prefetch-bug"))
    assert train_with_prefetch(tiny_model_dir, corpus, tmp_path) == 1
    assert threads == ["attnscope-prefetch"]  # it did fail on the thread
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("attnscope:")]
    log = tmp_path / "data" / "bugs.log"
    assert lines == [f"attnscope: bug: KeyError: 'planted-prefetch-bug' (traceback in {log})"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "planted-prefetch-bug" in text
    assert "in _work" in text and "in next_chunk" in text  # the thread's frames, not only where it was re-raised


def test_a_user_error_on_the_prefetch_thread_is_its_one_line(tiny_model_dir, corpus, tmp_path, monkeypatch, capsys):
    from sae.engine.activations import CorpusError

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    threads = planted_chunk_failure(monkeypatch, CorpusError("the corpus file vanished while training"))
    assert train_with_prefetch(tiny_model_dir, corpus, tmp_path) == 2
    assert threads == ["attnscope-prefetch"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" not in err
    assert [x for x in err.splitlines() if x.startswith("attnscope:")] == [
        "attnscope: error: the corpus file vanished while training"]
    assert not (tmp_path / "data" / "bugs.log").exists()


def test_resume_refuses_a_different_config(tiny_model, rows, tmp_path):
    train_saes(tiny_model, rows, cfg(), tmp_path)
    with pytest.raises(TrainingError, match="d_sae"):
        train_saes(tiny_model, rows, cfg(d_sae=32), tmp_path, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model, rows, tmp_path):
    trainer = Trainer(tiny_model, rows, cfg(total_tokens=64 * 12, checkpoint_every=2), tmp_path)
    original = trainer.buffer.next_batch

    def poisoned() -> torch.Tensor:
        batch = original()
        if trainer.step == 5:
            batch[:, 0, 0] = float("nan")
        return batch

    trainer.buffer.next_batch = poisoned
    with pytest.raises(TrainingDiverged, match="step 6.*last good checkpoint \\(step 4\\)"):
        trainer.run()
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["units"]["L0"]["sae"].values())
    sae = load_sae(tmp_path / "blocks.0.attn.hook_z")
    assert torch.isfinite(sae.W_enc).all()


def test_topk_training_keeps_k_active(tiny_model, rows, tmp_path):
    saes = train_saes(tiny_model, rows, cfg(architecture="topk", k=4, dead_tokens=128), tmp_path)
    x = tiny_model.capture_z(rows[:2], [0])[0].reshape(-1, tiny_model.d_z)
    assert ((saes[0].encode(x) > 0).sum(-1) <= 4).all()
    assert load_sae(tmp_path / "blocks.0.attn.hook_z").cfg.k == 4


def test_resampling_happens_during_training(tiny_model, rows, tmp_path):
    events: list[Progress] = []
    # a huge L1 kills most features; resampling every 4 steps must bring some back
    train_saes(tiny_model, rows, cfg(l1_coeff=50.0, resample_every=4, resample_window=4, total_tokens=64 * 9),
               tmp_path, on_progress=events.append)
    resampled = [e.metrics.get("resampled") for e in events if e.note == "step"]
    assert any(r and r > 0 for r in resampled)


def test_bad_inputs_raise_training_errors(tiny_model, rows, tmp_path):
    with pytest.raises(TrainingError, match="too small for one batch"):
        Trainer(tiny_model, rows[:2], cfg(), tmp_path)
    with pytest.raises(TrainingError, match="positive"):
        cfg(total_tokens=0)
    with pytest.raises(TrainingError, match="outside the model"):
        Trainer(tiny_model, rows, cfg(layers=[7]), tmp_path)
