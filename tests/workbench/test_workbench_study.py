"""The study screen driven through Pilot: label two features from the keyboard, check the label file, resume."""

from __future__ import annotations


import pytest

from sae.analysis.labels import LabelStore, sample_features
from workbench.app import WorkbenchApp
from workbench.engine import Engine
from workbench.findings import FindingsStore
from workbench.screens.modals import AskScreen
from workbench.screens.study import StudyScreen
from support import build_small_dashboards, private_dirs, settle, two_random_saes


@pytest.fixture
def study_env(tiny_model, tmp_path, monkeypatch):
    """Random SAEs for layers 0 and 1 with their dashboards built into a private cache; a private data dir."""
    from sae.analysis.dashboards import dashboard_dir, feature_stats

    private_dirs(monkeypatch, tmp_path)
    saes = two_random_saes(tiny_model)
    build_small_dashboards(tiny_model, saes)
    live = {}
    for layer, sae in saes.items():
        stats = feature_stats(dashboard_dir(tiny_model, sae, layer))
        live[layer] = (stats["n_fire"] > 0).nonzero().flatten().tolist()
    return saes, live, tmp_path


def _app(tiny_model, saes, tmp_path) -> WorkbenchApp:
    return WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), findings=FindingsStore(tmp_path / "findings"))


async def _open_study(pilot, app) -> StudyScreen:
    await settle(pilot, lambda: app.engine.info is not None)
    app.screen.query_one("#heatmap").focus()  # out of the prompt box, so 8 is a key, not text
    await pilot.press("8")
    await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
    screen = app.screen
    await settle(pilot, lambda: screen.items and screen.view is not None)
    return screen


async def test_study_screen_labels_two_features_and_resumes(tiny_model, study_env):
    saes, live, tmp_path = study_env
    app = _app(tiny_model, saes, tmp_path)
    async with app.run_test(size=(100, 32)) as pilot:
        screen = await _open_study(pilot, app)
        # the sample is N=30 seeded live features per layer, layer by layer, as sample_features draws them
        expected = [(layer, f) for layer in (0, 1) for f in sample_features(live[layer], 30, 0, layer)]
        assert screen.items == expected and screen.index == 0
        first = screen.current
        await settle(pilot, lambda: screen.view.feature == first[1])

        await pilot.press("c")  # the third family: previous-token
        await pilot.press("r", "y")  # rated yes
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: screen.index == 1 and screen.view is not None and screen.view.feature == expected[1][1])
        second = screen.current
        await pilot.press("a", "r", "n")  # induction, rated no
        await pilot.press("n")
        await settle(pilot, lambda: isinstance(app.screen, AskScreen))
        app.screen.query_one("#ask-input").value = "fires on the second copy"
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, StudyScreen))
        await pilot.press("r", "b")  # not a rating: an inline error, nothing stored
        await settle(pilot, lambda: screen.query_one("#study-status").is_error)
        panel = str(screen.query_one("#study-panel").render())
        assert "induction" in panel
        md = screen.export_to(str(tmp_path / "study.md"))
    store = LabelStore(tmp_path / "data" / "labels.json")
    got = {(lab.layer, lab.feature): (lab.family, lab.rating, lab.note) for lab in store.labels()}
    assert got == {first: ("previous-token", 2, ""), second: ("induction", 0, "fires on the second copy")}
    text = md.read_text()
    assert "| L0 | 2 | 50% | 50% | 50% (2) |" in text and "```" in text

    # a second app on the same files resumes where the first stopped, and sees its labels
    app2 = _app(tiny_model, saes, tmp_path)
    async with app2.run_test(size=(100, 32)) as pilot:
        screen = await _open_study(pilot, app2)
        assert screen.index == 1 and screen.current == second
        assert "fires on the second copy" in str(screen.query_one("#study-panel").render())


async def test_engine_head_survey_reads_the_labels(tiny_model, study_env):
    saes, _, _ = study_env
    eng = Engine.from_objects(tiny_model, saes, "random")
    try:
        first = await eng.heads()
        h0 = first.heads[0]
        layer, fid = h0.layer, h0.features[0].id
        assert all(f.source == "automatic" for h in first.heads for f in h.features)
        sl = await eng.study_layer(layer, 1, 0)  # the SAE's id as the label store knows it
        eng.label_store().put(sl.sae, layer, fid, "successor", 2)
        again = await eng.heads()
        mine = [f for h in again.heads if h.layer == layer for f in h.features if f.id == fid]
        assert mine and all(f.role == "successor" and f.source == "human" for f in mine)
        others = [f for h in again.heads for f in h.features if f.id != fid or h.layer != layer]
        assert all(f.source == "automatic" for f in others)
        assert f"L{layer} from human labels for" in again.summary and "human label" in again.rule
    finally:
        eng.close()


def _shown(widget) -> str:
    """The text a Static shows (its content drawn by rich, wide enough not to wrap)."""
    import io

    from rich.console import Console

    console = Console(width=400, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


async def test_a_feature_has_one_name_on_the_dashboard_heads_and_study_screens(tiny_model, study_env):
    """Issue 20.8: the dashboard header, the heads screen and the study screen name a feature with the same word
    (its automatic role, or a human label from labels.json where one exists), each saying where it came from."""
    from sae.analysis.families import FAMILY_OF_ROLE
    from workbench.screens.feature import FeatureScreen
    from workbench.screens.heads import HeadsScreen

    saes, _, tmp_path = study_env
    app = _app(tiny_model, saes, tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("3")
        await settle(pilot, lambda: isinstance(app.screen, HeadsScreen) and app.screen.survey is not None)
        heads = app.screen
        h = heads.survey.heads[-1]  # a layer-1 head: its automatic roles went through the induction test
        labelled, plain = h.features[0], h.features[1]
        assert plain.source == "automatic"
        role = plain.role
        sl = await app.engine.study_layer(h.layer, 30, 0)
        assert sl.auto[plain.id] == role  # the study's suggestion is the heads screen's role
        app.engine.label_store().put(sl.sae, h.layer, labelled.id, "successor")

        def heads_text() -> str:
            heads.show_head(next(x for x in heads.survey.heads if (x.layer, x.head) == (h.layer, h.head)))
            table = heads.query_one("#head-features")
            header = " | ".join(str(c.label) for c in table.columns.values())
            rows = [" | ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
            return "\n".join([_shown(heads.query_one("#head-detail")), header, *rows, _shown(heads.query_one("#head-rule"))])

        heads.action_run()
        await settle(pilot, lambda: heads.survey.heads[-1].features[0].source == "human")
        text = heads_text()
        assert "successor*" in text and role in text and "human label, labels.json" in text

        for fid, word in ((plain.id, f"{role} (automatic role) · {FAMILY_OF_ROLE[role]} (paper family, from the role)"),
                          (labelled.id, "successor (human label, labels.json)")):
            app.show_feature(h.layer, fid)
            await settle(pilot, lambda: isinstance(app.screen, FeatureScreen) and app.screen.view is not None
                         and app.screen.view.feature == fid)
            header = _shown(app.screen.query_one("#dashboard"))
            assert word in header, header[:300]

        app.switch_mode("explore")
        await pilot.press("8")
        await settle(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.items)
        study = app.screen
        for fid, word in ((plain.id, f"automatic role: {role}"), (labelled.id, "yours (labels.json): successor")):
            study.index = study.items.index((h.layer, fid))
            study.show()
            await settle(pilot, lambda: study.view is not None and study.view.feature == fid)
            panel = _shown(study.query_one("#study-panel"))
            assert word in panel and f"automatic role: {sl.auto[fid]}" in panel
            header = _shown(study.query_one("#study-dashboard"))
            assert f"{sl.auto[fid]} (automatic role)" in header
