"""The workbench driven through Pilot: assertions on what the widgets hold, on a tiny model with random SAEs."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from workbench.findings import FindingsStore
from workbench.widgets.heatmap import Heatmap, HeatmapData, escape_token, shade_levels, visible_token
from support import PROMPT, settle, slow_job, type_prompt

pytestmark = pytest.mark.usefixtures("data_dir")


# ---- the heatmap on its own (synthetic data) --------------------------------------------------------------


def test_shade_levels_are_relative_to_each_column_peak():
    v = np.array([[0.0, 2.0], [1.0, 4.0], [-1.0, 0.1]])
    lv = shade_levels(v)
    assert lv[:, 0].tolist() == [0, 9, 0]  # column peak 1.0 -> full shade; <= 0 -> off
    assert lv[:, 1].tolist() == [5, 9, 1]  # 2/4 -> ceil(4.5) = 5; a weak firing still shows


def test_escape_token_makes_control_characters_visible():
    assert escape_token("\n") == "↵"
    assert escape_token(" def\t") == " def⇥"
    assert escape_token("\x01[red]") == "\\x01[red]"  # markup-like text is drawn as is (Line API, no markup)
    assert visible_token(" the\n") == "␣the↵"  # a token on its own shows its spaces too
    assert visible_token("") == "∅"


async def test_heatmap_cursor_walks_cells_and_draws_tokens(tiny_model, saes):
    from textual.app import App

    n_tok, n_col = 300, 12
    rng = np.random.default_rng(0)
    values = np.maximum(rng.normal(size=(n_tok, n_col)), 0)
    data = HeatmapData([f"tok{i}" for i in range(n_tok)], list(range(100, 100 + n_col)), values)
    selected: list[tuple[int, int]] = []

    class One(App):
        def compose(self):
            yield Heatmap(data, id="hm")

        def on_cell_selected(self, m):
            selected.append((m.pos, m.column))

    async with One().run_test(size=(80, 24)) as pilot:
        hm = pilot.app.query_one(Heatmap)
        hm.focus()
        await pilot.press("down", "down", "right", "end")
        await pilot.pause()
        assert hm.selected == (n_tok - 1, 1)
        assert selected[-1] == (n_tok - 1, 1)
        # the last row is scrolled into view and drawn from the data
        assert hm.scroll_offset.y > 0
        line = "".join(seg.text for seg in hm.render_line(hm.scrollable_content_region.height - 1))
        assert f"tok{n_tok - 1}" in line
        header = "".join(seg.text for seg in hm.render_line(0))
        assert "100" in header and "101" in header  # the header stays on line 0 while scrolled
        await pilot.press("home", "left", "left")
        assert hm.selected == (0, 0)


# ---- the app ---------------------------------------------------------------------------------------------


async def test_prompt_fills_heatmap_and_side_panel_matches_the_sae(app, tiny_model, saes):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None and app.screen.sae_layer == 1)
        await type_prompt(pilot, app)
        screen = app.screen
        res = screen.result
        hm = screen.query_one(Heatmap)
        assert hm.data.tokens == tiny_model.token_strs(tiny_model.to_tokens(PROMPT)[0])
        assert hm.has_focus
        # independent check: the heatmap holds the SAE's activations on z captured by sae.engine.models
        tokens, _ = tiny_model.to_tokens(PROMPT)
        z = tiny_model.capture_z(tokens, [1])[1][0]
        with torch.no_grad():
            acts = saes[1].encode(z)
        np.testing.assert_allclose(hm.data.values, acts[:, res.columns].numpy(), rtol=1e-4, atol=1e-5)
        await pilot.press("down", "down", "right")
        await settle(pilot, lambda: screen.detail is not None and (screen.detail.pos, screen.detail.feature) == (2, res.columns[1]))
        d = screen.detail
        # DFA by head sums to the pre-activation (hand-computed from z and W_enc)
        with torch.no_grad():
            pre = ((z[2] - saes[1].b_dec) @ saes[1].W_enc + saes[1].b_enc)[d.feature].item()
        assert sum(d.dfa_heads) + d.dfa_bias == pytest.approx(pre, abs=1e-4)
        assert screen.query_one("#head-bars").values == pytest.approx(d.dfa_heads)
        assert len(screen.query_one("#source-strip").values) == 3


async def test_bad_input_gets_inline_messages_and_keeps_the_text(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        prompt = app.screen.query_one("#prompt")
        prompt.focus()
        await pilot.press("space", "enter")
        status = app.screen.query_one("#explore-status")
        assert status.is_error and "empty" in status.message
        assert prompt.value == " "
        # unknown feature id on the feature screen: inline error, the typed text stays
        await pilot.press("escape")
        app.screen.query_one("#heatmap").focus()
        await pilot.press("2", "g")
        await pilot.pause()
        await pilot.press(*"9999", "enter")
        await pilot.pause()
        ask = app.screen
        assert "outside the layer" in str(ask.query_one("#ask-error").render())
        assert ask.query_one("#ask-input").value == "9999"
        await pilot.press("escape")


async def test_layer_keys_and_feature_screen(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        explore = app.screen
        await pilot.press("left_square_bracket")
        assert explore.sae_layer == 0
        await settle(pilot, lambda: explore.result is not None and explore.result.layer == 0)
        layer, fid = explore.selected_feature()
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "view", None) is not None)
        feat = app.screen
        assert (feat.sae_layer, feat.feature) == (layer, fid)
        shares = feat.view.head_shares
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: feat.view.feature == (fid + 1) % 48)
        await pilot.press("t")
        await settle(pilot, lambda: feat.trace is not None)
        assert feat.trace.feature == (fid + 1) % 48
        assert not feat.query_one("#trace-tree").has_class("hidden")


async def test_pin_then_export_markdown(app, data_dir, tmp_path):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await settle(pilot, lambda: app.screen.detail is not None)
        await pilot.press("p")
        await pilot.pause()
        await pilot.press(*"looks like a name mover", "enter")
        await pilot.pause()
        assert len(app.findings) == 1 and app.findings.findings[0].note == "looks like a name mover"
        # saved to disk at once
        assert FindingsStore(data_dir).findings[0].note == "looks like a name mover"
        await pilot.press("7")
        await pilot.pause()
        assert app.screen.query_one("#findings-table").row_count == 1
        # export to a folder that does not exist: inline error, then a good path
        await pilot.press("e")
        await pilot.pause()
        ask = app.screen
        ask.query_one("#ask-input").value = str(tmp_path / "nope" / "f.md")
        await pilot.press("enter")
        await pilot.pause()
        assert "does not exist" in str(ask.query_one("#ask-error").render())
        ask.query_one("#ask-input").value = str(tmp_path / "f.md")
        await pilot.press("enter")
        await pilot.pause()
    text = (tmp_path / "f.md").read_text()
    assert "looks like a name mover" in text and "DFA by head" in text and "**" in text


async def test_keys_are_handled_while_a_long_job_runs(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        import threading

        started, release = threading.Event(), threading.Event()
        handle = app.engine.start_job("slow", slow_job(started, release, 0.005), app.post_message)
        await settle(pilot, lambda: started.is_set())
        # switching screens, typing and running a prompt all work while the job holds the worker thread
        await pilot.press("3", "1")
        assert app.current_mode == "explore"
        await type_prompt(pilot, app)
        assert handle.running
        await pilot.press("down")
        assert app.screen.query_one(Heatmap).cursor_row == 1
        release.set()
        await settle(pilot, lambda: handle.state == "finished")


async def test_help_lists_the_screen_keys(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("question_mark")
        await pilot.pause()
        help_screen = app.screen
        assert any(desc == "Layer+" for _, desc in help_screen.rows)
        assert any(desc == "Pin" for _, desc in help_screen.rows)
        await pilot.press("escape")
        assert app.screen.MODE == "explore"


async def test_training_screen_validates_and_runs_and_stops(app, tmp_path):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("6")
        await pilot.pause()
        tr = app.screen
        tr.query_one("#tr-layers").value = "7"
        await pilot.press("r")
        assert tr.query_one("#train-status").is_error and "outside the model" in tr.query_one("#train-status").message
        assert tr.query_one("#tr-layers").value == "7"  # nothing typed is lost
        tr.query_one("#tr-layers").value = "0"
        tr.query_one("#tr-width").value = "32"
        tr.query_one("#tr-tokens").value = "200000"
        tr.query_one("#tr-batch").value = "64"
        tr.query_one("#tr-out").value = str(tmp_path / "run")
        tr.query_one("#train-form").focus()
        app.set_focus(None)
        await pilot.press("r")
        await settle(pilot, lambda: tr.query_one("#spark-loss").values, timeout=60)
        await pilot.press("x")
        await settle(pilot, lambda: not tr.job.running, timeout=60)
        assert tr.job.state == "cancelled"
        assert (tmp_path / "run" / "checkpoint.pt").exists()


async def test_induction_screen_runs_a_job_and_ioi_errors_inline(app, tiny_model):
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        app.screen.query_one("#heatmap").focus()
        await pilot.press("4")
        await pilot.pause()
        ind = app.screen
        ind.query_one("#ind-n").value = "0"
        await pilot.press("r")
        assert ind.query_one("#ind-status").is_error and ind.job is None
        ind.query_one("#ind-n").value = "2"
        await pilot.press("r")
        await settle(pilot, lambda: ind.result is not None, timeout=60)
        table = ind.query_one("#ind-table")
        assert table.row_count == tiny_model.n_layers * tiny_model.n_heads
        heads_in_table = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert heads_in_table == {f"L{h.layer}H{h.head}" for h in ind.result.heads}
        # IOI: a bad layer is caught before running; a job that raises becomes an inline error, not a crash
        await pilot.press("5")
        await pilot.pause()
        ioi = app.screen
        ioi.query_one("#ioi-layer").value = "9"
        await pilot.press("r")
        assert "outside the model" in ioi.query_one("#ioi-status").message
        ioi.query_one("#ioi-layer").value = "1"
        await pilot.press("r")
        await settle(pilot, lambda: ioi.job is not None and not ioi.job.running, timeout=60)
        await pilot.pause()
        if ioi.job.state == "failed":  # the tiny model's tokenizer splits most names
            assert ioi.query_one("#ioi-status").is_error
        else:
            assert ioi.query_one("#ioi-table").row_count > 0


async def test_feature_screen_proxy_study(app, tmp_path, monkeypatch):
    """y on the feature screen: a proxy rule, the study on held-out text, its panel; escape returns to the dashboard."""
    corpus = tmp_path / "heldout.txt"
    corpus.write_text("Mary and John went to the store. John gave a drink to Mary. " * 60)
    from sae.analysis.dashboards import scan

    monkeypatch.setattr(scan.DashboardSpec, "corpus", str(corpus))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await type_prompt(pilot, app)
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "view", None) is not None)
        feat = app.screen
        await pilot.press("y")
        await pilot.pause()
        await pilot.press(*"bogus", "enter")
        await pilot.pause()
        assert "KIND:ARG" in str(app.screen.query_one("#ask-error").render())
        app.screen.query_one("#ask-input").value = "regex:Mary"
        await pilot.press("enter")
        await settle(pilot, lambda: feat.proxy is not None, timeout=60)
        assert feat.proxy.proxy == "regex:Mary" and "specificity" in feat.proxy.summary
        assert sum(t + f for _, t, f, _, _ in feat.proxy.bins) == feat.proxy.data["n_fires"]
        finding = feat.current_finding()
        assert finding is not None and "against regex:Mary" in finding.title and finding.data["proxy"] == "regex:Mary"
        await pilot.press("escape")
        await pilot.pause()
        assert feat.proxy is None
