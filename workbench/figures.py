"""Figures for exported findings: each pinned finding's heatmap and attribution bars as SVG files beside the
markdown report, linked from it, so a researcher can paste them into notes and papers.

The figures are drawn from the plain data a finding keeps (`Finding.data`) with the same rich renderables the
screens use, and written by rich's `Console(record=True).export_svg`.
"""

from __future__ import annotations

import io
import re
from urllib.parse import quote
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from workbench.engine import OutputError, head_name, swap_dir, visible, xml_clean
from workbench.findings import md_escape
from workbench.findings import ExportError, Finding, check_export_target, check_figure_data, export_markdown, write_export
from workbench.widgets.bars import signed_bars
from workbench.widgets.heatmap import LEVELS, format_value, shade_levels, visible_token

SVG_WIDTH = 80  # the narrowest figure, in terminal columns
SVG_MAX_WIDTH = 400  # the widest: a figure is as wide as its longest line, so no row wraps


def figure_width(renderable: RenderableType) -> int:
    """The columns `renderable` needs for none of its lines to wrap (at least SVG_WIDTH, at most SVG_MAX_WIDTH)."""
    console = Console(width=SVG_MAX_WIDTH, file=io.StringIO())
    return max(SVG_WIDTH, min(SVG_MAX_WIDTH, console.measure(renderable).maximum))


def svg(renderable: RenderableType, title: str, width: int | None = None) -> str:
    """`renderable` drawn as an SVG (a terminal window of `width` columns, by default as wide as its longest line,
    and as tall as it needs)."""
    width = figure_width(renderable) if width is None else width
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    console.print(renderable)
    return xml_clean(console.export_svg(title=visible(title, keep="")))  # user text: ESC/NUL would break the XML


def heatmap_renderable(tokens: list[str], columns: list[int], values: list[list[float]], pos: int | None = None,
                       col: int | None = None) -> Text:
    """The explore heatmap as text: a row per token, a column per feature, shaded by activation / column peak."""
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(len(tokens), len(columns))
    lv = shade_levels(v)
    text = Text(no_wrap=True)
    text.append(f"{'pos':>4} {'token':<12}│", style="bold")
    for c, fid in enumerate(columns):
        text.append(f"{fid:>5} ", style="bold reverse" if c == col else "bold")
    for r, tok in enumerate(tokens):
        text.append("\n")
        text.append(f"{r:>4} {visible_token(tok)[:12]:<12}", style="bold" if r == pos else "")
        text.append("│")
        for c in range(len(columns)):
            level = int(lv[r, c])
            shade = 0.15 + 0.85 * level / LEVELS if level else 0.0
            ch = int(255 * shade)
            style = f"on rgb({ch},{int(ch * 0.55)},0)" if level else "dim"
            if (r, c) == (pos, col):
                style += " bold underline"
            text.append(f"{format_value(float(v[r, c])):>5} ", style=style)
    text.append("\n")
    text.append("shade: activation / the feature's peak on this prompt · number: activation · ·: off", style="dim")
    return text


def bars_renderable(title: str, labels: list[str], values: list[float]) -> Group:
    width = max((len(x) for x in labels), default=4) + 1
    return Group(Text(title, style="bold"), signed_bars(labels, values, width=40, label_width=min(width, 24)))


def finding_figures(f: Finding) -> list[tuple[str, str, RenderableType]]:
    """(file stem, caption, renderable) for each figure a finding has data for."""
    d: dict[str, Any] = f.data or {}
    out: list[tuple[str, str, RenderableType]] = []
    hm = d.get("heatmap")
    if isinstance(hm, dict) and hm.get("tokens") and hm.get("columns"):
        out.append(("heatmap", "heatmap", heatmap_renderable(hm["tokens"], hm["columns"], hm["values"],
                                                             d.get("pos"), hm.get("column"))))
    if d.get("dfa_heads"):
        layer = f.layer if f.layer is not None else "?"
        labels = [head_name(layer, h) for h in range(len(d["dfa_heads"]))]
        out.append(("dfa-heads", "DFA by head", bars_renderable(
            f"DFA by head (bias {d.get('dfa_bias', 0.0):+.3f})", labels, list(d["dfa_heads"]))))
    if d.get("dfa_src") and isinstance(hm, dict) and hm.get("tokens"):
        src = list(d["dfa_src"])
        top = sorted(range(len(src)), key=lambda s: -abs(src[s]))[:12]
        labels = [f"{s} {visible_token(hm['tokens'][s])}" for s in top]
        out.append(("dfa-sources", "DFA by source token", bars_renderable("DFA by source token", labels, [src[s] for s in top])))
    if d.get("head_shares"):
        layer = f.layer if f.layer is not None else "?"
        labels = [head_name(layer, h) for h in range(len(d["head_shares"]))]
        out.append(("head-shares", "head shares of the decoder norm",
                    bars_renderable("Head shares of the decoder norm", labels, list(d["head_shares"]))))
    bars = d.get("bars")
    if isinstance(bars, dict) and bars.get("labels"):
        out.append(("bars", str(bars.get("title", "bars")),
                    bars_renderable(str(bars.get("title", "")), list(bars["labels"]), list(bars["values"]))))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "finding"


def write_figures(markdown_path: Path, findings: list[Finding]) -> dict[str, list[tuple[str, str]]]:
    """Write every finding's figures into `<report stem>-figures/` beside the report; returns {finding id:
    [(caption, path relative to the report)]}.

    All or nothing: the figures are drawn into a fresh folder that replaces only the figure files in
    `-figures/` (`safe_io.swap_dir`: the user's other files there stay). A `-figures` that is a symlink, a file
    or a read-only place is an `ExportError` before anything is written; no figure is written through a link."""
    folder = figures_folder(markdown_path)
    planned: list[tuple[Finding, str, str, RenderableType]] = []
    links: dict[str, list[tuple[str, str]]] = {}
    for i, f in enumerate(findings, 1):
        check_figure_data(f, i - 1)  # damaged figure data: one line naming the field, nothing exported
        figures = finding_figures(f)
        for stem, caption, renderable in figures:
            name = f"{i:02d}-{slug(f.title)}-{stem}.svg"
            planned.append((f, name, caption, renderable))
            links.setdefault(f.id, []).append((caption, f"{folder.name}/{name}"))
    if not planned:
        return links
    if folder.is_symlink():
        raise ExportError(f"{folder} is a symbolic link; refusing to write figures through it (remove it or pick "
                          "another report name)")
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file, not a folder for the figures; pick another report name")
    drawn = {name: svg(renderable, f"{f.title}: {caption}") for f, name, caption, renderable in planned}

    def write(tmp: Path) -> None:
        for name, text in drawn.items():
            (tmp / name).write_text(text, encoding="utf-8")

    try:
        swap_dir(folder, write, owned=drawn)
    except OutputError as exc:
        raise ExportError(f"cannot write the figures: {exc}") from None
    return links


def link_figures(markdown: str, findings: list[Finding], links: dict[str, list[tuple[str, str]]]) -> str:
    """Put each finding's figure links under its heading (`## i. title`) in the report."""
    lines = markdown.split("\n")
    out: list[str] = []
    heads = {f"## {i}. ": f.id for i, f in enumerate(findings, 1)}
    for line in lines:
        out.append(line)
        fid = next((v for k, v in heads.items() if line.startswith(k)), None)
        if fid and links.get(fid):
            out.append("")
            out += [f"![{md_escape(caption)}]({quote(path)})" for caption, path in links[fid]]
    return "\n".join(out)


def figures_folder(markdown_path: str | Path) -> Path:
    """Where `write_figures` puts a report's figures: `<report stem>-figures/` beside it."""
    p = Path(markdown_path).expanduser()
    return p.with_name(p.stem + "-figures")


def export_would_replace(path: str | Path) -> list[str]:
    """What an export to `path` would replace: the report file and/or its figures folder (empty: nothing)."""
    p = Path(path).expanduser()
    out = [str(p)] if p.is_file() else []
    folder = figures_folder(p)
    if folder.is_dir() and any(folder.iterdir()):
        out.append(f"{folder}/")
    return out


def export_report(path: str | Path, findings: list[Finding], title: str = "attnscope findings") -> Path:
    """The markdown report and, beside it, each finding's figures as SVG, linked from it. The report's place is
    checked first, the figures written next, and the report replaced last: a failure anywhere leaves the old
    report as it was (`ExportError`, one line)."""
    target = check_export_target(path)
    links = write_figures(target, findings)
    text = export_markdown(findings, title=title)
    return write_export(path, link_figures(text, findings, links) if links else text)
