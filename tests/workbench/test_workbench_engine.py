"""The workbench engine on its own: staleness, cancellation, errors, and quick requests during long jobs.

Fake jobs stand in for torch work, so these run in milliseconds; the thread and asyncio plumbing is real.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from sae.engine.jobs import Progress
from workbench.engine import Cancelled, StaleRequest, Worker
from workbench.messages import JobCancelled, JobFailed, JobFinished, JobProgress, JobStarted


class Inbox:
    """Collects posted messages from the worker thread."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self.lock:
            self.items.append(msg)

    def of(self, cls) -> list:
        with self.lock:
            return [m for m in self.items if isinstance(m, cls)]


async def wait_until(pred, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close()


async def test_quick_call_returns_result_and_runs_on_one_thread(worker):
    main = threading.get_ident()
    tids = [await worker.call(threading.get_ident) for _ in range(3)]
    assert len(set(tids)) == 1 and tids[0] != main
    assert await worker.call(lambda a, b=0: a * 10 + b, 4, b=2) == 42


async def test_newer_request_makes_older_ones_stale(worker):
    gate = threading.Event()
    ran: list[str] = []

    def work(name: str) -> str:
        if name == "first":
            gate.wait(5)  # hold the thread while the user "types" two more requests
        ran.append(name)
        return name

    first = asyncio.ensure_future(worker.call(work, "first", channel="features"))
    await asyncio.sleep(0.05)  # "first" is now running
    second = asyncio.ensure_future(worker.call(work, "second", channel="features"))
    third = asyncio.ensure_future(worker.call(work, "third", channel="features"))
    other = asyncio.ensure_future(worker.call(work, "other", channel="dashboard"))
    await asyncio.sleep(0.02)
    gate.set()
    with pytest.raises(StaleRequest):  # finished, but a newer request exists: its result is dropped
        await first
    with pytest.raises(StaleRequest):  # never started
        await second
    assert await third == "third"
    assert await other == "other"  # a different channel is not affected
    assert "second" not in ran


async def test_error_in_quick_call_reaches_the_awaiter_and_the_worker_survives(worker):
    def boom() -> None:
        raise ValueError("feature 999 is outside the SAE (d_sae=96)")

    with pytest.raises(ValueError, match="outside the SAE"):
        await worker.call(boom)
    assert await worker.call(lambda: "still alive") == "still alive"


async def test_long_job_progress_finish_and_failure(worker, tmp_path, monkeypatch):
    inbox = Inbox()

    def job(rep):
        for i in range(1, 4):
            rep.progress(Progress("demo", i, 3))
        return {"answer": 7}

    h = worker.start_job("demo", job, inbox)
    await wait_until(lambda: inbox.of(JobFinished))
    assert inbox.of(JobStarted)[0].job_id == h.id
    last = inbox.of(JobProgress)[-1].progress  # the final report is never throttled
    assert (last.job, last.done, last.total) == ("demo", 3, 3)
    assert inbox.of(JobFinished)[0].result == {"answer": 7}
    assert h.state == "finished"

    from workbench.engine import EngineError as TrainingError  # any AttnscopeError

    def bad(rep):  # an error meant for the user: one line, no traceback kept
        raise TrainingError("NaN loss at step 12; kept the last good checkpoint")

    h2 = worker.start_job("train", bad, inbox)
    await wait_until(lambda: inbox.of(JobFailed))
    failed = inbox.of(JobFailed)[0]
    assert failed.job_id == h2.id and failed.error == "NaN loss at step 12; kept the last good checkpoint"
    assert h2.state == "failed" and not failed.bug

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path))

    def buggy(rep):  # anything else is a bug: it keeps its traceback, in the bug log and on the message
        return {}["planted"]

    h3 = worker.start_job("demo", buggy, inbox)
    await wait_until(lambda: len(inbox.of(JobFailed)) == 2)
    bug = inbox.of(JobFailed)[1]
    log = tmp_path / "bugs.log"
    assert bug.job_id == h3.id and bug.bug and h3.state == "failed"
    assert bug.error == f"bug: KeyError: 'planted' (traceback in {log})"
    assert "Traceback" in bug.traceback and "in buggy" in bug.traceback
    assert "in buggy" in log.read_text() and "KeyError: 'planted'" in log.read_text()

    def cancelled(rep):  # Cancelled is a cancellation, not a failure
        raise Cancelled()

    worker.start_job("demo", cancelled, inbox)
    await wait_until(lambda: inbox.of(JobCancelled))
    assert len(inbox.of(JobFailed)) == 2


async def test_cancel_stops_a_long_job_between_steps(worker):
    inbox = Inbox()
    steps: list[int] = []

    def job(rep):
        for i in range(10_000):
            steps.append(i)
            time.sleep(0.001)
            rep.progress(Progress("train", i, 10_000))
        return "never"

    h = worker.start_job("train", job, inbox)
    await wait_until(lambda: len(steps) > 5)
    h.cancel()
    await wait_until(lambda: inbox.of(JobCancelled))
    assert h.state == "cancelled" and not inbox.of(JobFinished)
    n = len(steps)
    await asyncio.sleep(0.05)
    assert len(steps) == n < 10_000  # nothing ran after the cancel


async def test_job_that_polls_the_event_returns_partial_result(worker):
    inbox = Inbox()

    def job(rep):  # like sae.engine.training.train_saes(cancel=...): returns what it has when asked to stop
        done = 0
        while not rep.cancel.cancelled:
            done += 1
            time.sleep(0.001)
        return {"steps": done}

    h = worker.start_job("train", job, inbox)
    await asyncio.sleep(0.03)
    h.cancel()
    await wait_until(lambda: inbox.of(JobCancelled))
    assert inbox.of(JobCancelled)[0].partial["steps"] > 0


async def test_quick_requests_are_answered_while_a_long_job_runs(worker):
    inbox = Inbox()
    stop = threading.Event()

    def job(rep):
        while not stop.is_set():
            time.sleep(0.002)  # one "training step"
            rep.progress(Progress("train", 0, 0, note="step"))

    h = worker.start_job("train", job, inbox)
    await wait_until(lambda: h.state == "running")
    t0 = time.monotonic()
    answers = [await worker.call(lambda i=i: i * i, channel=None) for i in range(5)]
    assert answers == [0, 1, 4, 9, 16]
    assert time.monotonic() - t0 < 2.0
    assert h.state == "running"  # served between steps, not after the job
    stop.set()
    await wait_until(lambda: inbox.of(JobFinished))


async def test_jobs_run_one_after_another(worker):
    inbox = Inbox()
    order: list[str] = []
    worker.start_job("a", lambda rep: order.append("a"), inbox)
    worker.start_job("b", lambda rep: order.append("b"), inbox)
    await wait_until(lambda: len(inbox.of(JobFinished)) == 2)
    assert order == ["a", "b"]


def test_cancelled_exception_is_not_an_error_type():
    assert not issubclass(Cancelled, (ValueError, RuntimeError))


# ---- the typed boundary: views, and the dashboard's label ------------------------------------------------------


async def test_dashboard_view_is_frozen_and_names_a_built_feature_by_its_role(tiny_model, tmp_path, monkeypatch):
    """Before a build the view says so; after one it names the feature by its automatic role (the roles rules with the
    induction test), the paper family mapped from it, and a human label from the label file, each with its source."""
    import dataclasses

    from support import TINY_TEXT, random_sae

    from sae.analysis import dashboards as dash
    from sae.analysis import roles
    from sae.analysis.families import FAMILY_OF_ROLE
    from sae.analysis.labels import sae_id_of
    from workbench.engine import DashboardView, Engine

    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ATTNSCOPE_LABELS", str(tmp_path / "labels.json"))
    sae = random_sae(tiny_model, 1, d_sae=24, seed=5)
    eng = Engine.from_objects(tiny_model, {1: sae}, "random")
    try:
        before = await eng.dashboard(1, 3)
        assert isinstance(before, DashboardView) and not before.built and before.role == "" and before.words == ""
        assert "not built" in before.note
        with pytest.raises(dataclasses.FrozenInstanceError):
            before.role = "x"  # type: ignore[misc]
        spec = dash.DashboardSpec(n_tokens=32 * 10, context=3, n_top=5, n_samples=8, n_dfa=2, context_size=32, n_logits=4)
        docs = [TINY_TEXT[i : i + 300] for i in range(0, 3000, 300)]
        res = dash.build_dashboards(tiny_model, sae, 1, spec, docs=docs, batch_rows=3)
        role = roles.roles_layer(res.directory, confirm=roles.model_confirmer(tiny_model, sae, 1)).role_of()
        live = sorted(role)
        assert live, "the random SAE should have live features"
        views = [await eng.dashboard(1, f) for f in (live[0], live[-1])]
        for f, v in zip((live[0], live[-1]), views):
            assert v.built and v.role == role[f] and v.paper_family == FAMILY_OF_ROLE[role[f]] and v.human_label == ""
            assert v.words == f"{role[f]} (automatic role) · {FAMILY_OF_ROLE[role[f]]} (paper family, from the role)"
        eng.label_store().put(sae_id_of(res.directory)[0], 1, live[0], "successor")
        v = await eng.dashboard(1, live[0])
        assert v.human_label == "successor" and v.words.startswith("successor (human label, labels.json) · ")
        dead = next((f for f in range(24) if f not in role), None)
        if dead is not None:
            assert (await eng.dashboard(1, dead)).words == ""
    finally:
        eng.close()


def test_progress_reports_pass_through():
    from workbench.engine.worker import as_progress

    same = Progress("train", 1, 2)
    assert as_progress("train", same) is same
    assert (as_progress("ioi", None).job, as_progress("ioi", None).total) == ("ioi", 0)


def test_newer_progress_replaces_an_older_queued_one_of_the_same_job():
    old, new, other = (JobProgress(1, "train", Progress("train", 1, 9)), JobProgress(1, "train", Progress("train", 2, 9)),
                       JobProgress(2, "ioi", Progress("ioi", 1, 9)))
    assert old.can_replace(new) and not old.can_replace(other) and not old.can_replace(JobFinished(1, "train", None))


async def test_heatmap_runs_the_model_once_per_prompt_for_every_layer(tiny_model, saes):
    """The explore heatmap: a new prompt is one model forward for all SAE layers; switching layers costs no forward;
    the numbers are those of a forward stopped at the layer alone; a cell of a layer whose result was dropped is
    worked out again from the prompt's run."""
    from sae.analysis.dfa import prompt_features
    from support import count_passes
    from workbench.engine import Engine
    from workbench.engine import core

    prompt = "When Mary and John went to the store, John gave a drink to Mary."
    eng = Engine.from_objects(tiny_model, saes)
    try:
        with count_passes(tiny_model) as passes:
            views = {layer: await eng.features(prompt, layer) for layer in (1, 0, 1)}
            assert passes["n"] == 1
            await eng.features(prompt + " Then", 0)
            assert passes["n"] == 2
            await eng.features(prompt, 0)
        for layer, view in views.items():
            ref = prompt_features(tiny_model, saes[layer], prompt, top_k=8, layer=layer)
            assert view.columns == ref.top_features(24)
            torch.testing.assert_close(torch.from_numpy(view.values), ref.acts[:, view.columns], atol=1e-6, rtol=1e-6)
        eng._last.clear()  # as when KEEP_LAST layers were visited since
        feature = views[1].columns[0]
        pos = int(torch.from_numpy(views[1].values[:, 0]).argmax())
        detail = await eng.cell(1, pos, feature)
        ref = prompt_features(tiny_model, saes[1], prompt, top_k=8, layer=1)
        assert abs(detail.pre_act - float(ref.pre[pos, feature])) < 1e-6
        assert abs(sum(detail.dfa_heads) + detail.dfa_bias - detail.pre_act) < 1e-4
        assert core.KEEP_LAST >= 1
    finally:
        eng.close()


async def test_first_heatmap_of_the_default_starts_on_a_specific_feature():
    """Issue 22: the first heatmap a new user sees (the example prompt, the first SAE layer, the shipped SAEs)
    starts its cursor on a feature that means something: not dense in training (its saved density, read here from
    the file) and firing on few of the prompt's positions: both " John", most on the one after the comma (the
    shipped layer-0 start is a next-item-of-a-list feature)."""
    from safetensors.torch import load_file

    from sae import zoo
    from workbench.engine import Engine
    from workbench.launch import EXAMPLE_PROMPT

    eng = Engine("default", "default", device="cpu")
    try:
        info = await eng.open()
        layer = info.sae_layers[0]
        view = await eng.features(EXAMPLE_PROMPT, layer)
    finally:
        eng.close()
    feature, acts = view.columns[0], torch.from_numpy(view.values[:, 0])
    density = load_file(zoo.DEFAULT_SAES_DIR / f"blocks.{layer}.attn.hook_z" / "sparsity.safetensors")["sparsity"]
    assert 10 ** float(density[feature]) < 0.10  # not one of the dense latents
    assert int((acts > 0).sum()) <= len(view.tokens) // 4
    johns = [i for i, t in enumerate(view.tokens) if t == " John"]
    assert len(johns) == 2 and all(acts[i] > 0 for i in johns)
    assert int(acts.argmax()) == johns[1]  # "store, John"
