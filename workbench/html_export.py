"""Share a page: the pinned findings as one self-contained HTML file (`attnscope export --html`, key `E` in the
workbench). Inline CSS only, no script and no network: a Content-Security-Policy forbids loading or running
anything, and every piece of user text (tokens, notes, labels, titles, prompts) goes through `html.escape`.

Each finding shows its provenance, note, its markdown body (tables, contexts with the active token in bold) and
its figures drawn from `Finding.data` as HTML: the prompt heatmap, bars (DFA by head / source, head shares, an
intervention's next-token probabilities) and an intervention's before / after table.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

from workbench.engine import head_name
from workbench.findings import ExportError, Finding

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; script-src 'none'; base-uri 'none'; form-action 'none'"
CSS = """
body { font-family: ui-sans-serif, system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.prov { color: #666; font-size: 0.9em; } blockquote { border-left: 3px solid #f0a020; margin: 0.5em 0; padding: 0.2em 1em;
       background: #fff8ec; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre, .tok { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; white-space: pre; }
.hm td { font-family: ui-monospace, monospace; font-size: 0.8em; text-align: right; padding: 1px 4px; }
.hm td.t { text-align: left; white-space: pre; } .hm .sel { outline: 2px solid #1060e0; }
.bar { display: flex; align-items: center; font-size: 0.85em; margin: 1px 0; }
.bar .l { width: 14em; font-family: ui-monospace, monospace; white-space: pre; overflow: hidden; }
.bar .b { height: 0.9em; } .bar .p { background: #2f8f3f; } .bar .n { background: #c03030; }
.bar .v { margin-left: 0.5em; color: #555; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { font-weight: bold; font-size: 0.9em; }
.toc td { font-size: 0.9em; }
"""


def esc(text: Any) -> str:
    """User text as HTML text: `&`, `<`, `>`, both quotes escaped; newlines and tabs made visible in tokens."""
    return html.escape(str(text), quote=True)


def tok(t: Any) -> str:
    return esc(str(t).replace("\n", "\\n").replace("\t", "\\t"))


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else esc(v)


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """One markdown line: escaped, then `**x**` bold and `` `x` `` code (matched on the escaped text, so nothing
    the user typed can become a tag); markdown's backslash escapes removed."""
    s = esc(text)
    s = _BOLD.sub(r"<b>\1</b>", s)
    s = _CODE.sub(r"<code>\1</code>", s)
    return re.sub(r"\\([\\`*_{}\[\]()#+\-.!|])", r"\1", s)


def _split_row(line: str) -> list[str]:
    cells, cur, i = [], "", 0
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if body[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += body[i]
        i += 1
    cells.append(cur.strip())
    return cells


def markdown_html(md: str) -> str:
    """The small markdown the findings use: tables, ``` blocks, `> ` quotes, `- ` lists, paragraphs."""
    out: list[str] = []
    lines = md.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + esc("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [_split_row(r) for r in rows if not re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*", r)]
            if cells:
                head, *body = cells
                t = "<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                for r in body:
                    t += "<tr>" + "".join(
                        f"<td class=num>{_inline(c)}</td>" if re.fullmatch(r"[+\-]?[\d.,e%+-]+", c) else f"<td>{_inline(c)}</td>"
                        for c in r) + "</tr>"
                out.append(t + "</table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
            i += 1
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
            i += 1
        else:
            i += 1
    return "\n".join(out)


# ---- figures from Finding.data -----------------------------------------------------------------------------


def heatmap_html(tokens: list[str], columns: list[int], values: list[list[float]], pos: Any = None, col: Any = None) -> str:
    """The prompt heatmap: one row per token, one column per feature, shaded by activation / column peak."""
    peaks = [max((abs(float(r[c])) for r in values), default=0.0) or 1.0 for c in range(len(columns))]
    rows = ["<tr><th>pos</th><th>token</th>" + "".join(
        f"<th{' class=sel' if c == col else ''}>{int(f)}</th>" for c, f in enumerate(columns)) + "</tr>"]
    for r, t in enumerate(tokens):
        cells = []
        for c in range(len(columns)):
            v = float(values[r][c]) if r < len(values) and c < len(values[r]) else 0.0
            a = min(1.0, abs(v) / peaks[c])
            style = f"background: rgba(240,140,0,{a:.2f})" if v else "color:#bbb"
            sel = " sel" if (r, c) == (pos, col) else ""
            cells.append(f"<td class='v{sel}' style='{style}'>{f'{v:.2f}' if v else '·'}</td>")
        rows.append(f"<tr><td class=num>{r}</td><td class=t>{tok(t)}</td>{''.join(cells)}</tr>")
    return "<table class=hm>" + "".join(rows) + "</table>"


def bars_html(labels: list[Any], values: list[float]) -> str:
    peak = max((abs(float(v)) for v in values), default=0.0) or 1.0
    out = []
    for lab, v in zip(labels, values):
        w = 20 * abs(float(v)) / peak
        out.append(f"<div class=bar><span class=l>{tok(lab)}</span><span class='b {'p' if v >= 0 else 'n'}' "
                   f"style='width:{w:.2f}em'></span><span class=v>{float(v):+.4g}</span></div>")
    return "".join(out)


def intervention_html(iv: dict[str, Any]) -> str:
    """An intervention's edits, next-token top-k before / after, loss change (the CLI's JSON form)."""
    toks = iv.get("tokens", [])
    parts = [f"<p>mean next-token loss {float(iv['loss_before']):.4f} → {float(iv['loss_after']):.4f} "
             f"({float(iv['loss_after']) - float(iv['loss_before']):+.4f})</p>"]
    edits = "".join(f"<tr><td class=num>{int(f)}</td><td class=num>{int(p)}</td><td class=tok>{tok(toks[p]) if p < len(toks) else ''}"
                    f"</td><td class=num>{float(a):.4g}</td><td class=num>{float(v):.4g}</td></tr>"
                    for f, p, a, v in zip(iv["features"], iv["positions"], iv["activation"], iv["new_activation"]))
    parts.append("<table><tr><th>feature</th><th>pos</th><th>token</th><th>activation</th><th>new</th></tr>" + edits + "</table>")
    rows = "".join(f"<tr><td class=num>{i + 1}</td><td class=tok>{tok(b['token'])}</td><td class=num>{float(b['prob']):.1%}</td>"
                   f"<td class=tok>{tok(a['token'])}</td><td class=num>{float(a['prob']):.1%}</td></tr>"
                   for i, (b, a) in enumerate(zip(iv["top_before"], iv["top_after"])))
    parts.append("<table><tr><th>#</th><th>before</th><th>p</th><th>after</th><th>p</th></tr>" + rows + "</table>")
    return "".join(parts)


def figures_html(f: Finding) -> str:
    d: dict[str, Any] = f.data or {}
    out = []

    def fig(caption: str, body: str) -> None:
        out.append(f"<figure><figcaption>{esc(caption)}</figcaption>{body}</figure>")

    hm = d.get("heatmap")
    try:
        if isinstance(hm, dict) and hm.get("tokens") and hm.get("columns"):
            fig("heatmap", heatmap_html(list(hm["tokens"]), list(hm["columns"]), list(hm["values"]), d.get("pos"), hm.get("column")))
        def heads(n: int) -> list[str]:  # named as everywhere else: L0H2
            return [head_name(f.layer, h) if f.layer is not None else f"H{h}" for h in range(n)]

        if d.get("dfa_heads"):
            fig(f"DFA by head (bias {float(d.get('dfa_bias', 0.0)):+.3f})",
                bars_html(heads(len(d["dfa_heads"])), list(d["dfa_heads"])))
        if d.get("head_shares"):
            fig("head shares of the decoder norm",
                bars_html(heads(len(d["head_shares"])), list(d["head_shares"])))
        if isinstance(d.get("intervention"), dict):
            fig("intervention", intervention_html(d["intervention"]))
        bars = d.get("bars")
        if isinstance(bars, dict) and bars.get("labels"):
            fig(str(bars.get("title", "bars")), bars_html(list(bars["labels"]), list(bars["values"])))
    except (KeyError, TypeError, ValueError, IndexError):  # a finding edited by hand: its text still shows
        out.append("<p class=prov>(this finding's figure data could not be read)</p>")
    return "".join(out)


def export_html(findings: list[Finding], title: str = "attnscope findings") -> str:
    """One self-contained page for `findings`."""
    head = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv=Content-Security-Policy content=\"{CSP}\">"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>")
    parts = [head, f"<h1>{esc(title)}</h1>",
             f"<p class=prov>{len(findings)} finding(s), exported {esc(time.strftime('%Y-%m-%d %H:%M'))} by attnscope.</p>"]
    if findings:
        parts.append("<table class=toc><tr><th>#</th><th>kind</th><th>title</th><th>model</th><th>layer</th></tr>" + "".join(
            f"<tr><td class=num>{i}</td><td>{esc(f.kind)}</td><td><a href='#f{i}'>{esc(f.title)}</a></td>"
            f"<td>{esc(f.model)}</td><td class=num>{'' if f.layer is None else esc(f.layer)}</td></tr>"
            for i, f in enumerate(findings, 1)) + "</table>")
    for i, f in enumerate(findings, 1):
        prov = [f"kind: {f.kind}", f"pinned {f.created}"]
        if f.model:
            prov.append(f"model: {f.model}")
        if f.saes:
            prov.append(f"SAEs: {f.saes}")
        if f.layer is not None:
            prov.append(f"layer {f.layer}")
        where = f.data.get("prompt") if isinstance(f.data, dict) else None
        parts.append(f"<section id=f{i}><h2>{i}. {esc(f.title)}</h2><p class=prov>{esc(' · '.join(prov))}</p>")
        if isinstance(where, str) and where:
            parts.append(f"<p class=prov>prompt: <span class=tok>{esc(where)}</span></p>")
        if f.note.strip():
            parts.append(f"<blockquote>{esc(f.note.strip())}</blockquote>")
        parts.append(figures_html(f))
        if f.body.strip():
            parts.append(markdown_html(f.body.strip()))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(path: str | Path, findings: list[Finding], title: str = "attnscope findings") -> Path:
    """Write the page atomically through `sae.engine.safe_io` (via `workbench.findings.write_export`), by the rule
    of every writer: a symlink the user named as `path` is theirs and is written through (the link stays, the
    target keeps its mode), as the markdown export does; a bad place is an `ExportError` with one line."""
    from workbench.findings import write_export

    p = Path(path).expanduser()
    if not str(path).strip():
        raise ExportError("no export path given")
    if p.is_dir():
        raise ExportError(f"{p} is a directory; give a file name such as {p / 'findings.html'}")
    return write_export(p, export_html(findings, title))
