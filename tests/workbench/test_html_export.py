"""The shared HTML page: parsed (nothing executable, nothing fetched, every piece of user text shown as text) and
opened in a real headless browser (Chromium from the Debian packages; `.ci/run` installs it, and the test is
skipped only where no browser exists)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from workbench.findings import ExportError, Finding, FindingsStore
from workbench.html_export import export_html, write_html

EVIL = '<script>alert(1)</script>'
EVIL_NOTE = '<img src=x onerror="alert(2)"> & "quotes" \'too\''
EVIL_TOKEN = '"><svg onload=alert(3)>'


def findings() -> list[Finding]:
    iv = {"layer": 1, "features": [5], "tokens": ["<|endoftext|>", EVIL_TOKEN, " to"], "positions": [1],
          "activation": [1.5], "new_activation": [0.0],
          "top_before": [{"token": " Mary", "id": 3, "logit": 5.0, "prob": 0.9}, {"token": EVIL, "id": 4, "logit": 1.0, "prob": 0.05}],
          "top_after": [{"token": " John", "id": 7, "logit": 4.0, "prob": 0.6}, {"token": " Mary", "id": 3, "logit": 3.0, "prob": 0.3}],
          "logit_change": [], "loss_before": 2.0, "loss_after": 2.5, "downstream": []}
    return [
        Finding(kind="cell", title=f"L1 feature 5 on {EVIL}", note=EVIL_NOTE, model="m", saes="s", layer=1,
                body=f"Context: a **{EVIL_TOKEN}** b\n\n| src | token | DFA |\n|---|---|---|\n| 1 | {EVIL} | 0.5 |\n\n"
                     "```text\n<b>not bold</b>\n```",
                data={"prompt": f"When {EVIL}", "pos": 1, "dfa_heads": [0.5, -0.25], "dfa_bias": 0.1,
                      "heatmap": {"tokens": ["<|endoftext|>", EVIL_TOKEN, " to"], "columns": [5, 9],
                                  "values": [[0.0, 0.1], [1.5, 0.0], [0.2, 0.3]], "column": 0}}),
        Finding(kind="intervention", title="L1 feature 5 ablated", layer=1,
                data={"prompt": "p", "pos": 2, "intervention": iv,
                      "bars": {"title": "next token", "labels": [EVIL, " John"], "values": [0.1, 0.6]}}),
    ]


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def _check_inert(page: str) -> Collect:
    p = Collect()
    p.feed(page)
    tags = {t for t, _ in p.tags}
    assert not tags & {"script", "img", "svg", "iframe", "object", "embed", "link", "form", "input", "base"}, tags
    for tag, attrs in p.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert name not in ("src", "srcset", "action", "formaction"), (tag, name)
            assert "javascript:" not in (value or "").lower() and "url(" not in (value or "").lower()
            if name == "href":
                assert (value or "").startswith("#")
    assert "http://" not in page and "https://" not in page  # nothing fetched
    return p


def test_page_is_inert_and_shows_user_text_as_text():
    page = export_html(findings(), title=f"report {EVIL}")
    p = _check_inert(page)
    text = "".join(p.text)
    for s in (EVIL, EVIL_NOTE, EVIL_TOKEN, "<b>not bold</b>"):
        assert s in text, s
    assert "Content-Security-Policy" in page and "script-src 'none'" in page
    assert "2.0000 → 2.5000" in text and "60.0%" in text  # the intervention's loss and after-probabilities


def test_write_is_atomic_and_refuses_folders(tmp_path):
    out = write_html(tmp_path / "f.html", findings())
    assert out.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ExportError, match="directory"):
        write_html(tmp_path, findings())
    with pytest.raises(ExportError, match="does not exist"):
        write_html(tmp_path / "no" / "f.html", findings())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_cli_export_html(tmp_path, monkeypatch, capsys):
    from workbench.launch import main

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    store = FindingsStore()
    for f in findings():
        store.add(f)
    assert main(["export", "--html", "--out", str(tmp_path / "page.html")]) == 0
    assert "wrote 2 finding(s)" in capsys.readouterr().out
    _check_inert((tmp_path / "page.html").read_text())
    assert main(["export", "--html", "--out", str(tmp_path / "missing" / "x.html")]) == 2
    assert capsys.readouterr().err.startswith("attnscope: error:")


def browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(browser() is None, reason="no Chromium on this machine (.ci/run installs the Debian package)")
def test_opens_in_headless_chromium(tmp_path):
    page = write_html(tmp_path / "page.html", findings(), title=f"report {EVIL}")
    env = dict(os.environ, HOME=str(tmp_path))  # its profile lands in the tmp dir
    res = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom", Path(page).as_uri()],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    p = _check_inert(dom)  # the DOM after the browser ran it: no element came from user text
    text = "".join(p.text)
    assert f"report {EVIL}" in text and EVIL_NOTE in text and EVIL_TOKEN in text
    assert sum(1 for t, _ in p.tags if t == "section") == 2
    assert "alert" not in "".join(v or "" for _, attrs in p.tags for _, v in attrs)
