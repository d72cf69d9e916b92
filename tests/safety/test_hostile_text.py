"""Issue 25, section 3: user text (notes, titles, families, paths, prompts) never acts as markup or terminal commands:
rich/Textual markup shown as typed, control characters visible, SVG figures valid XML, markdown without raw HTML,
invalid UTF-8 in argv one clean run. Each test fails on the code before `sae.engine.safe_text`."""

from __future__ import annotations

import json
import re
import xml.dom.minidom

import pytest

from sae.engine.safe_text import from_argv, markup_escape, md_cell, md_inline, plain, term_line, visible, xml_text
from support import settle

HOSTILE = ["[/]", "[bold red]", "[link=file:///etc/passwd]x[/link]", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07",
           "nul\x00byte", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b", "\u202eevil", "\\",
           "x\x9by"]


# ---- the functions themselves ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_visible_leaves_no_control_character(text):
    out = visible(text, keep="")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in out)
    assert plain(text).plain == visible(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_markup_escape_prints_the_text_as_typed(text):
    from rich.console import Console
    import io

    buf = io.StringIO()
    Console(file=buf, width=200).print("[bold]x[/] " + markup_escape(text) + "[dim] y[/]")
    assert buf.getvalue().rstrip("\n") == "x " + visible(text) + " y"


@pytest.mark.parametrize("text", HOSTILE)
def test_xml_text_always_parses(text):
    doc = f'<svg title="{xml_text(text)}"><text>{xml_text(text)}</text></svg>'
    xml.dom.minidom.parseString(doc.encode("utf-8"))


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_cells_carry_no_html_and_no_cell_break(text):
    for out in (md_inline(text), md_cell(text)):
        assert "<" not in out and ">" not in out
        assert "|" not in out.replace("\\|", "")


def test_argv_bytes_that_are_not_utf8():
    bad = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    fixed = from_argv(bad)
    fixed.encode("utf-8")  # valid text now
    assert fixed.startswith("caf") and "\ufffd" in fixed
    assert from_argv("naïve") == "naïve"
    assert term_line("a\nb\x1b") == "a⏎b␛"


# ---- the CLI -----------------------------------------------------------------------------------------------


def test_cli_tables_show_markup_as_text(capsys):
    from sae.cli.common import FitTable, out

    t = FitTable(title="[bold red]title")
    t.add_column("x")
    t.add_row("[/]")
    t.add_row("[link=x]y")
    out.print(t)
    text = capsys.readouterr().out
    assert "[/]" in text and "[link=x]y" in text and "[bold red]title" in text


def test_cli_console_shows_escape_sequences(capsys):
    from rich.text import Text

    from sae.cli.common import out

    out.print(Text("\x1b]0;pwned\x07 \x1b[2J"))
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text and "␛" in text


def test_error_lines_show_control_characters(capsys):
    from sae.cli import main

    assert main(["dashboard", "--layer", "0", "--feature", "0", "--saes", "/nonexistent/\x1b[2J[/]"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1


def test_invalid_utf8_prompt_reaches_the_tokenizer_as_text(tiny_model_dir, tmp_path, capsys):
    from support import random_sae
    from sae.cli import main
    from sae.engine.formats import save_sae
    from sae.engine.models import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    d = save_sae(random_sae(model, 0), tmp_path / "blocks.0.attn.hook_z")
    prompt = b"hello \xff\xfe world".decode("utf-8", "surrogateescape")
    rc = main(["features", "--model", str(tiny_model_dir), "--saes", str(d), "--layer", "0", "--json", prompt])
    assert rc == 0, capsys.readouterr().err


def test_study_sample_and_report_with_markup_in_families(tmp_path, monkeypatch, capsys):
    """A family named `[/]` or `[bold red]` in labels.json: `study report` prints it as text."""
    from sae.cli import main

    labels = tmp_path / "labels.json"
    fams = ["[/]", "[bold red]", "[link=http://x]y", "\x1b]0;t\x07"]
    recs = {f"s/0/{i}": {"sae": "s", "layer": 0, "feature": i, "family": fam, "rating": 2, "note": "\x1b[31m[/]"}
            for i, fam in enumerate(fams)}
    labels.write_text(json.dumps({"format": 1, "families": fams, "labels": recs}))
    rc = main(["study", "report", "--labels", str(labels), "--no-agreement"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "[bold red]" in cap.out and "[/]" in cap.out
    assert "Traceback" not in cap.err and "MarkupError" not in cap.err
    assert "\x1b" not in cap.out


# ---- markdown and SVG exports ------------------------------------------------------------------------------


def hostile_findings():
    from workbench.findings import Finding

    return [Finding(kind="feature", title=t, note=f"note {t}", model=t, layer=0,
                    data={"heatmap": {"tokens": [t, "b"], "columns": [1], "values": [[1.0], [0.5]]},
                          "dfa_heads": [0.1, -0.2]})
            for t in HOSTILE]


def test_export_markdown_holds_no_raw_html_or_control_characters():
    from workbench.findings import export_markdown

    text = export_markdown(hostile_findings())
    outside_code = re.sub(r"`[^`\n]*`", "", text)  # a code span shows its text literally (CommonMark)
    assert "<script" not in outside_code and "<img" not in outside_code
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in text)
    assert "\x1b" not in text and "\x9b" not in text


def test_a_findings_body_from_a_hostile_file_carries_no_raw_html():
    """The body is attnscope's markdown, but findings.json is a file anyone may edit: a raw tag outside code is
    text in the report; tables, emphasis and code (fenced or inline) are kept exactly."""
    from workbench.findings import Finding, export_markdown

    body = ("| a | b |\n|---|--:|\n| <script>alert(1)</script> | **1** |\n<img src=x onerror=alert(1)>\n"
            "<!-- hidden --> a < b and `<kbd>` stays\n```text\n<script>in a fence</script>\n```\n</table>")
    text = export_markdown([Finding(kind="note", title="t", body=body)])
    outside_code = re.sub(r"`[^`\n]*`", "", re.sub(r"```text\n.*?\n```", "", text, flags=re.S))
    for tag in ("<script", "<img", "<!--", "</table", "</script"):
        assert tag not in outside_code, tag
    assert "| &lt;script>alert(1)&lt;/script> | **1** |" in text and "|---|--:|" in text
    assert "a < b and `<kbd>` stays" in text and "```text\n<script>in a fence</script>\n```" in text


def test_every_exported_svg_is_valid_xml(tmp_path):
    from workbench.figures import export_report

    export_report(tmp_path / "r.md", hostile_findings())
    svgs = list((tmp_path / "r-figures").glob("*.svg"))
    assert svgs
    for f in svgs:
        xml.dom.minidom.parseString(f.read_bytes())


# ---- the workbench -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("data_dir")
async def test_findings_screen_with_markup_notes_and_titles(app, data_dir):
    from workbench.findings import FindingsStore

    store = FindingsStore(data_dir)
    for f in hostile_findings():
        store.add(f)
    app.findings.load()  # the app's store was read when the fixture built it
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("7")
        await pilot.pause()
        table = app.screen.query_one("#findings-table")
        assert table.row_count == len(HOSTILE)
        for _ in HOSTILE:
            await pilot.press("down")
        await pilot.pause()
        app.notify("[/] [bold red] \x1b[2J")  # a toast with user text
        await pilot.pause()
        # delete one: its toast carries the title
        await pilot.press("d")
        await pilot.pause()
        assert app.is_running


@pytest.mark.usefixtures("data_dir")
async def test_export_error_with_markup_in_the_path_is_inline(app, tmp_path):
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("e")
        await pilot.pause()
        ask = app.screen
        ask.query_one("#ask-input").value = str(tmp_path / "[/]" / "[bold red]" / "f.md")
        await pilot.press("enter")
        await pilot.pause()
        assert "does not exist" in str(ask.query_one("#ask-error").render())
        assert app.is_running


@pytest.mark.usefixtures("data_dir")
async def test_note_of_a_pin_another_workbench_deleted(app, data_dir):
    """B edits the note of a pin A deleted: one line in a toast, no KeyError."""
    from workbench.findings import Finding, FindingsStore

    store = FindingsStore(data_dir)
    f = store.add(Finding(kind="note", title="shared"))
    app.findings.load()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.engine.info is not None)
        await pilot.press("7")
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        FindingsStore(data_dir).remove(f.id)  # the other workbench
        await pilot.press(*"late note", "enter")
        await pilot.pause()
        assert app.is_running
        assert FindingsStore(data_dir).findings == []


def test_set_note_on_a_deleted_pin_is_a_findings_error(tmp_path):
    from workbench.findings import Finding, FindingsError, FindingsStore

    a, b = FindingsStore(tmp_path), FindingsStore(tmp_path)
    f = a.add(Finding(kind="note", title="x"))
    a.remove(f.id)
    with pytest.raises(FindingsError, match="no longer pinned"):
        b.set_note(f.id, "late")
