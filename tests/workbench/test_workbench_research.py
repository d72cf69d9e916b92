"""Pilot tests of the researcher's moves in the workbench (issue 24): ablate a cell in one key, set / scale it
from a small form, read the model's prediction before / after, pin it, the loss strip and a head's pattern. The
numbers are checked against the CLI's function run independently of the screen (itself tested against a plain
forward hook in test_intervene.py)."""

from __future__ import annotations

import pytest

from sae.analysis.intervene import Edit, intervene, predictions
from support import PROMPT, settle, type_prompt

pytestmark = pytest.mark.usefixtures("data_dir")


async def _on_a_firing_cell(pilot, app):
    await type_prompt(pilot, app)
    screen = app.screen
    await settle(pilot, lambda: screen.detail is not None and screen.predictions is not None)
    return screen


async def test_ablate_in_one_key_shows_prediction_before_after(app, tiny_model, saes):
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        layer, pos, feature = screen.selected_cell()
        panel = screen.query_one("#predict-panel")
        # the model's own prediction at the selected token, before anything
        want = predictions(tiny_model, PROMPT, top=10)
        assert [t.id for t in screen.predictions.top[pos]] == [t.id for t in want.top[pos]]
        assert "next token after" in str(panel.render())
        await pilot.press("a")
        await settle(pilot, lambda: screen.intervention is not None)
        v = screen.intervention
        ref = intervene(tiny_model, saes, PROMPT, layer, [Edit(feature, "ablate", pos=pos)], top=10, at=pos)
        assert v.positions == (pos,) and v.features == (feature,)
        assert [t.id for t in v.top_after] == [t.id for t in ref.top_after]
        assert v.loss_after == pytest.approx(ref.loss_after, abs=1e-5)
        shown = str(panel.render())
        assert "loss" in shown and "before" in shown and "after" in shown and "ablated" in shown
        # pinning makes a finding with all of it
        await pilot.press("p")
        await pilot.press("enter")
        await settle(pilot, lambda: len(app.findings) == 1)
        f = app.findings.findings[0]
        assert f.kind == "intervention" and f.data["prompt"] == PROMPT and f.data["pos"] == pos
        assert f.data["intervention"]["loss_after"] == pytest.approx(ref.loss_after, abs=1e-5)
        assert "before" in f.body and "after" in f.body


async def test_form_sets_and_scales(app, tiny_model, saes):
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        layer, pos, feature = screen.selected_cell()
        await pilot.press("i")
        await settle(pilot, lambda: app.screen.id == "intervene-form")
        form = app.screen
        form.query_one("#ask-input").value = "nonsense"
        await pilot.press("enter")
        assert app.screen is form and "not a number" in str(form.query_one("#ask-error").render())
        form.query_one("#ask-input").value = "x3 all"
        await pilot.press("enter")
        await settle(pilot, lambda: app.screen is screen and screen.intervention is not None)
        ref = intervene(tiny_model, saes, PROMPT, layer, [Edit(feature, "scale", 3.0)], top=10)
        v = screen.intervention
        assert list(v.positions) == ref.positions
        assert [t.logit for t in v.top_after] == pytest.approx([t.logit for t in ref.top_after], abs=1e-4)
        assert v.at == len(v.tokens) - 1
        await pilot.press("i")
        await settle(pilot, lambda: app.screen.id == "intervene-form")
        app.screen.query_one("#ask-input").value = "2.5"
        await pilot.press("enter")
        await settle(pilot, lambda: screen.intervention is not None and screen.intervention.describe != v.describe)
        assert screen.intervention.new_activation == (2.5,)


async def test_loss_strip_and_head_pattern(app, tiny_model):
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        await pilot.press("l")
        shown = str(screen.query_one("#predict-panel").render())
        want = predictions(tiny_model, PROMPT, top=3)
        assert "loss per token" in shown and f"{want.loss[0]:6.3f}" in shown
        await pilot.press("v")
        await settle(pilot, lambda: getattr(app.screen, "pattern_view", None) is not None)
        pat = app.screen
        assert pat.pattern_view.values.shape == (len(want.tokens), len(want.tokens))
        head0 = pat.p_head
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: pat.pattern_view.head != head0)
        await pilot.press("escape")
        await settle(pilot, lambda: app.screen is screen)


def test_parse_intervention():
    from workbench.screens.explore import parse_intervention

    assert parse_intervention("2.5") == ("set", 2.5, "cell")
    assert parse_intervention("x3 all") == ("scale", 3.0, "all")
    assert parse_intervention("*0.5") == ("scale", 0.5, "cell")
    assert parse_intervention("0") == ("ablate", 0.0, "cell")
    for bad in ("", "abc", "1 2", "nan", "x"):
        with pytest.raises(ValueError):
            parse_intervention(bad)


async def test_head_to_any_of_its_features_and_its_pattern(app):
    from workbench.engine import HeadFeatureView, HeadView

    head = HeadView(layer=1, head=2, verdict="polysemantic", main_role="induction",
                    features=tuple(HeadFeatureView(id=i, share=0.3 - 0.1 * n, role="x") for n, i in enumerate((5, 9, 17))))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("3")
        heads = app.screen
        heads.show_head(head)
        heads.query_one("#head-features").focus()
        await pilot.press("down", "enter")
        await settle(pilot, lambda: app.screen.MODE == "feature")
        await settle(pilot, lambda: getattr(app.screen, "feature", None) == 9)
        assert app.screen.sae_layer == 1
        await pilot.press("3")
        await settle(pilot, lambda: app.screen is heads)
        await pilot.press("v")
        await settle(pilot, lambda: getattr(app.screen, "pattern_view", None) is not None)
        assert (app.screen.p_layer, app.screen.p_head) == (1, 2)


def test_parse_palette_query():
    from workbench.search_commands import parse_query

    assert parse_query("token:  the") == ("token", " the")
    assert parse_query("token: the") == ("token", "the")
    assert parse_query("Role: induction") == ("role", "induction")
    assert parse_query("here") == ("position", "")
    assert parse_query("feature 3") is None and parse_query("text:") is None


async def test_palette_here_opens_the_strongest_feature_at_the_cell(app, tiny_model, saes):
    from sae.analysis.search import at_position

    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        pos = screen.selected_pos()
        want = at_position(tiny_model, saes, PROMPT, pos, top=20).hits[0]
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        for ch in "here":
            await pilot.press(ch)
        await pilot.pause(1.0)
        await pilot.press("enter")
        await settle(pilot, lambda: app.screen.MODE == "feature")
        await settle(pilot, lambda: (app.screen.sae_layer, app.screen.feature) == (want.layer, want.feature))


async def test_key_E_writes_the_html_page(app, tmp_path):
    out = tmp_path / "page.html"
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        await pilot.press("a")
        await settle(pilot, lambda: screen.intervention is not None)
        await pilot.press("p", "enter")
        await settle(pilot, lambda: len(app.findings) == 1)
        await pilot.press("E")
        await settle(pilot, lambda: app.screen.id == "export-html")
        app.screen.query_one("#ask-input").value = str(out)
        await pilot.press("enter")
        await settle(pilot, lambda: out.is_file())
    page = out.read_text()
    assert "intervention" in page and "<script" not in page


async def test_finding_goes_back_to_where_it_was_made_and_copy(app):
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        await pilot.press("down", "down", "right")
        await settle(pilot, lambda: screen.detail is not None and screen.detail.pos == screen.selected_pos())
        layer, pos, feature = screen.selected_cell()
        await pilot.press("y")
        assert app.copied.startswith(f"L{layer} feature {feature}") and "DFA by head" in app.copied
        await pilot.press("p", "enter")
        await settle(pilot, lambda: len(app.findings) == 1)
        await type_prompt(pilot, app, "The quick brown fox jumps over the lazy dog")
        await pilot.press("7")
        await settle(pilot, lambda: app.screen.MODE == "findings")
        await pilot.press("g")
        await settle(pilot, lambda: app.screen is screen and screen.prompt == PROMPT and screen.result is not None
                     and screen.result.tokens[1] == "When")
        await settle(pilot, lambda: screen.selected_cell() == (layer, pos, feature))


async def test_prompt_history_is_remembered_across_launches(tiny_model, saes):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine

    first = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with first.run_test(size=(120, 36)) as pilot:
        await type_prompt(pilot, first, "one two three")
        await type_prompt(pilot, first, "four five six")
    again = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with again.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: again.screen.MODE == "explore")
        assert again.prompt_history()[-2:] == ["one two three", "four five six"]
        box = again.screen.query_one("#prompt")
        box.focus()
        await pilot.press("up")
        assert box.value == "four five six"
        await pilot.press("up")
        assert box.value == "one two three"
        await pilot.press("down")
        assert box.value == "four five six"


async def test_compare_two_prompts(app, tiny_model, saes):
    from sae.analysis.intervene import compare_prompts

    other = "When Mary and John went to the store, Mary gave a drink to"
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _on_a_firing_cell(pilot, app)
        await pilot.press("c")
        await settle(pilot, lambda: app.screen.id == "compare-form")
        app.screen.query_one("#ask-input").value = other
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "compare_view", None) is not None)
        v = app.screen.compare_view
        ref = compare_prompts(tiny_model, saes[1], PROMPT, other)
        assert list(v.features) == ref.features and list(v.b) == pytest.approx(ref.b)
        await pilot.press("p")
        await settle(pilot, lambda: len(app.findings) == 1)
        await pilot.press("escape")
        await settle(pilot, lambda: app.screen is screen)


async def test_training_form_and_experiment_results_are_remembered(tiny_model, saes, tmp_path):
    """A run's form and an experiment's result come back in a new workbench (the session file in the data dir)."""
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.messages import JobFinished

    first = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with first.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: first.engine.info is not None)
        await pilot.press("6")
        tr = first.screen
        tr.query_one("#tr-tokens").value = "4096"
        tr.query_one("#tr-out").value = str(tmp_path / "run")
        first.session.put("training_form", tr.form_values())  # what r does before it starts the run
        await pilot.press("5")
        ioi = first.screen
        view = first.engine.experiment_from_dict({
            "experiment": "heads", "n_prompts": 4, "layer": 1, "summary": "heads · 4 prompts",
            "records": [{"layer": 1, "head": 2, "zero_delta": -0.5}, {"layer": 0, "head": 1, "zero_delta": 0.25}],
            "sort_key": "zero_delta", "clean_logit_diff": 1.0, "settings": {"n_prompts": 4, "seed": 0}})
        ioi.post_message(JobFinished(0, "ioi", view))
        await settle(pilot, lambda: ioi.result is not None)
        await settle(pilot, lambda: isinstance(first.session.get("ioi"), dict))
    again = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with again.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: again.engine.info is not None)
        await pilot.press("6")
        await settle(pilot, lambda: again.screen.query_one("#tr-tokens").value == "4096")
        assert again.screen.query_one("#tr-out").value == str(tmp_path / "run")
        await pilot.press("5")
        ioi = again.screen
        await settle(pilot, lambda: ioi.result is not None)
        assert ioi.query_one("#ioi-table").row_count == 2
        # enter on the first row (sorted by zero_delta: head 0.1) jumps to that head
        ioi.query_one("#ioi-table").focus()
        await pilot.press("enter")
        await settle(pilot, lambda: again.screen.MODE == "heads")


async def test_screenshot_scenario_of_the_intervention(app):
    from workbench.screenshots import intervene_shot

    shots: list[str] = []
    async with app.run_test(size=(120, 36)) as pilot:
        await _on_a_firing_cell(pilot, app)
        await pilot.press("7")
        await intervene_shot(pilot, app, shots.append, 30.0)
        assert shots == ["intervene"] and app.screen.intervention is not None
        assert app.screen.intervention.positions  # the chosen cell fires, so the shot shows a change


async def test_induction_result_is_remembered_and_a_row_opens_its_head(tiny_model, saes):
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine
    from workbench.messages import JobFinished

    saved = {"model": "tiny", "n_per_length": 2, "seq_len": 16, "prefix_lengths": [2, 4], "seed": 0, "rule": "r",
             "heads": [{"layer": 1, "head": 3, "scores": {"2": 0.1, "4": 0.9}, "dla": {"2": 0.0, "4": 0.1},
                        "kind": "long-prefix"},
                       {"layer": 0, "head": 0, "scores": {"2": 0.0, "4": 0.0}, "dla": {"2": 0.0, "4": 0.0},
                        "kind": "not induction"}]}
    saved["found"] = [saved["heads"][0]]
    saved.update(sampling="attnscope", design="random prefixes")
    first = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with first.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: first.engine.info is not None)
        await pilot.press("4")
        ind = first.screen
        ind.post_message(JobFinished(0, "induction", first.engine.restore_induction(saved)))
        await settle(pilot, lambda: isinstance(first.session.get("induction"), dict))
    again = WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)
    async with again.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: again.engine.info is not None)
        await pilot.press("4")
        ind = again.screen
        await settle(pilot, lambda: ind.result is not None)
        table = ind.query_one("#ind-table")
        assert table.row_count == 2
        table.focus()
        await pilot.press("enter")  # the first row: the induction head 1.3
        await settle(pilot, lambda: again.screen.MODE == "heads")
        assert getattr(again.screen, "_want", None) == (1, 3)  # selected once the survey is there


async def test_palette_search_hint_types_the_prefix(app):
    from textual.command import CommandInput, CommandPalette

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Search features: token")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, CommandPalette)
                     and app.screen.query_one(CommandInput).value == "token: ")
