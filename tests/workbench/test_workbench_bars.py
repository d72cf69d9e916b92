"""Signed bars: lengths proportional to |value| / max, growing away from the axis on both sides."""

from workbench.widgets.bars import bar_cells, bar_cells_left, signed_bars


def test_right_and_left_bars_have_matching_lengths():
    # 0.5 of 8 cells = 4 full blocks on either side; 0.5625 = 4.5 cells: right uses an eighth glyph, left a half block
    assert bar_cells(1.0, 2.0, 8) == "████    "
    assert bar_cells_left(-1.0, 2.0, 8) == "    ████"
    assert bar_cells(1.125, 2.0, 8) == "████▌   "
    assert bar_cells_left(-1.125, 2.0, 8) == "   ▐████"
    assert bar_cells_left(-2.0, 2.0, 8) == "█" * 8


def test_signed_bars_put_negative_left_of_axis():
    text = signed_bars(["a", "b"], [-2.0, 1.0], width=8, label_width=2).plain.splitlines()
    assert text[0] == "a ████│     -2.000"
    assert text[1] == "b     │██   +1.000"
