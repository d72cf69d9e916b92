"""The analysis cache (sae.analysis.cache) and the head survey as a workbench job: results equal a direct
computation, are read back instead of recomputed, are recomputed when the SAE file changes, and a damaged or
foreign cache file is a miss. Pilot: the survey runs as a job (job line, ctrl+x cancels) while the explore
heatmap still answers and says it is waiting."""

from __future__ import annotations

import pickle
import threading

import pytest
from support import TINY_TEXT, random_sae

from sae.analysis import cache
from sae.analysis.dashboards import DashboardSpec, build_dashboards, dashboard_dir
from sae.engine.formats import load_sae, save_sae
from sae.engine.jobs import Progress

DOCS = [TINY_TEXT[i : i + 400] for i in range(0, 4000, 400)]
SPEC = DashboardSpec(n_tokens=32 * 8, context=3, n_top=5, n_samples=4, n_dfa=2, context_size=32, n_logits=3)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNSCOPE_LABELS", raising=False)
    return tmp_path


@pytest.fixture
def counting(monkeypatch):
    """Counts the computations of roles (what the cache saves)."""
    calls: list[int] = []
    real = cache.compute_roles

    def counted(model, sae, layer, *a, **k):
        calls.append(layer)
        return real(model, sae, layer, *a, **k)

    monkeypatch.setattr(cache, "compute_roles", counted)
    return calls


def _built(model, saes):
    dirs = {}
    for layer, sae in saes.items():
        build_dashboards(model, sae, layer, SPEC, docs=DOCS)
        dirs[layer] = dashboard_dir(model, sae, layer)
    return dirs


def test_survey_is_cached_and_recomputed_when_the_sae_file_changes(tiny_model, env, counting):
    from sae.analysis.heads import survey_heads
    from sae.analysis.roles import model_confirmer

    path = env / "sae-l1"
    save_sae(random_sae(tiny_model, 1, d_sae=24, seed=2), path)
    saes = {1: load_sae(path)}
    dirs = _built(tiny_model, saes)
    first = cache.head_survey(tiny_model, saes, dirs)
    direct = survey_heads(dirs, model=tiny_model.name, confirm={1: model_confirmer(tiny_model, saes[1], 1)})
    assert first.to_dict() == direct.to_dict()  # the cache stores the survey, it does not change it
    assert counting == [1]

    # a second visit (a new SAE object from the same file) reads the cache
    again_saes = {1: load_sae(path)}
    again = cache.head_survey(tiny_model, again_saes, dirs)
    assert again.to_dict() == first.to_dict() and counting == [1]
    assert cache.cached_head_survey(tiny_model, again_saes, dirs) is not None

    # the SAE file changes: a new content hash, so nothing cached applies
    save_sae(random_sae(tiny_model, 1, d_sae=24, seed=9), path)
    changed = {1: load_sae(path)}
    new_dirs = _built(tiny_model, changed)
    assert cache.cached_head_survey(tiny_model, changed, new_dirs) is None
    cache.head_survey(tiny_model, changed, new_dirs)
    assert counting == [1, 1]

    # a human label changes the survey but not the roles: the survey is recomputed from the cached roles
    labelled = cache.head_survey(tiny_model, changed, new_dirs, labels={1: {0: "successor"}})
    assert counting == [1, 1]
    fams = {f.role for lh in labelled.layers for h in lh.heads for f in h.top_by_decoder if f.id == 0}
    assert fams <= {"successor"}


def test_an_in_place_weight_change_gives_a_new_fingerprint(tiny_model):
    import torch

    from sae.analysis.dashboards.store import sae_fingerprint

    sae = random_sae(tiny_model, 1, d_sae=24, seed=2)
    a = sae_fingerprint(sae)
    assert sae_fingerprint(sae) == a
    with torch.no_grad():
        sae.W_enc[0, 0] += 1.0
    assert sae_fingerprint(sae) != a


def test_damaged_or_foreign_cache_files_are_misses(env):
    cache.store_result("heads", "k1", {"x": [1, 2.5, "a"]})
    assert cache.load_result("heads", "k1") == {"x": [1, 2.5, "a"]}
    f = cache.results_dir() / "heads" / "k1.pkl"
    f.write_bytes(b"not a pickle")
    assert cache.load_result("heads", "k1") is None

    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    f.write_bytes(pickle.dumps(Evil()))
    assert cache.load_result("heads", "k1") is None  # a pickle that would call a function is refused
    assert cache.cached("heads", {"a": 1}, lambda: 7) == 7
    assert cache.cached("heads", {"a": 1}, lambda: 8) == 7  # read back, not recomputed


# ---- the workbench -------------------------------------------------------------------------------------------


async def test_engine_second_survey_comes_from_the_cache(tiny_model, env, counting):
    from workbench.engine import Engine

    saes = {0: random_sae(tiny_model, 0, d_sae=24, seed=1), 1: random_sae(tiny_model, 1, d_sae=24, seed=2)}
    _built(tiny_model, saes)
    eng = Engine.from_objects(tiny_model, saes, "random")
    try:
        assert await eng.heads_cached() is None
        first = await eng.heads()
        assert sorted(counting) == [0, 1]
        second = await eng.heads_cached()
        assert second == first and sorted(counting) == [0, 1]
    finally:
        eng.close()


async def test_head_survey_is_a_job_the_heatmap_answers_during_it_and_ctrl_x_cancels(tiny_model, env, monkeypatch):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.screens.explore import ExploreScreen
    from workbench.screens.heads import HeadsScreen
    from support import PROMPT, settle

    saes = {0: random_sae(tiny_model, 0, d_sae=24, seed=1), 1: random_sae(tiny_model, 1, d_sae=24, seed=2)}
    _built(tiny_model, saes)
    started, release = threading.Event(), threading.Event()

    def slow_roles(model, sae, layer, directory, seed=0, on_progress=None, cancel=None):
        """Works (reporting progress, so quick requests are served) until released or cancelled."""
        started.set()
        i = 0
        while not release.wait(0.01):
            i += 1
            on_progress(Progress("induction confirmation", i % 10, 10, unit="batches"))
        raise AssertionError("the survey should have been cancelled")

    monkeypatch.setattr(cache, "compute_roles", slow_roles)
    app = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    try:
        async with app.run_test(size=(110, 32)) as pilot:
            await settle(pilot, lambda: app.engine.info is not None)
            app.screen.query_one("#heatmap").focus()
            await pilot.press("3")
            await settle(pilot, lambda: isinstance(app.screen, HeadsScreen))
            heads = app.screen
            await settle(pilot, lambda: started.is_set())
            jobs = app.engine.worker.jobs()
            assert [h.label for h in jobs] == ["head survey"] and jobs[0].state == "running"
            await settle(pilot, lambda: "head survey" in str(heads.query_one("#job-bar").render()))
            assert "ctrl+x" in heads.query_one("#heads-status").message

            # the explore heatmap answers while the survey runs, and says it waits for the job's next step
            await pilot.press("1")
            await settle(pilot, lambda: isinstance(app.screen, ExploreScreen))
            explore = app.screen
            status = explore.query_one("#explore-status")
            said: list[str] = []
            orig_say = status.say
            status.say = lambda m: (said.append(m), orig_say(m))  # type: ignore[method-assign]
            explore.query_one("#prompt").value = PROMPT
            explore.query_one("#prompt").focus()
            await pilot.press("enter")
            await settle(pilot, lambda: explore.result is not None and explore.result.tokens)
            assert any("pending" in m and "head survey" in m for m in said)
            assert app.engine.worker.jobs() and app.engine.worker.jobs()[0].label == "head survey"

            # ctrl+x stops it; the heads screen says so and nothing was cached
            explore.query_one("#heatmap").focus()
            await pilot.press("3")
            await settle(pilot, lambda: isinstance(app.screen, HeadsScreen))
            await pilot.press("ctrl+x")
            await settle(pilot, lambda: "cancelled" in heads.query_one("#heads-status").message)
            assert not app.engine.worker.jobs()
            assert await app.engine.heads_cached() is None
    finally:
        release.set()
