"""User text, shown or written safely: the one place that escapes it (torch-free, usable from anywhere).

User text is anything attnscope did not write itself: prompts, tokens, notes, titles, family names, labels,
paths, model names, error messages that quote them. It must never act as markup or as terminal commands:

- `visible(s)`: control characters (C0, DEL, C1: ESC, NUL, the bell, OSC/CSI introducers), bidi overrides and
  lone surrogates (invalid UTF-8 from argv or a file name) shown as visible marks (`␛`, `␀`, `\\x9b`, `\\xff`);
  newlines and tabs kept unless `keep=""`.
- `plain(s, style)`: a `rich.text.Text` of the visible text: never parsed as rich/Textual markup. Every label,
  table cell, notification and inline error that carries user text is one of these.
- `markup_escape(s)`: the visible text escaped for interpolation into a rich markup string (`f"[bold]{...}[/]"`).
- `term_line(s)`: one line for a plain `print` to a terminal (control characters shown, newlines as `⏎`).
- `xml_clean(doc)`: a whole SVG/XML document made well-formed (forbidden characters visible).
- `xml_text(s)`: text for SVG/XML: characters XML 1.0 forbids made visible, `& < > " '` as entities.
- `md_inline(s)`: user text inside markdown (a heading, a cell): HTML-significant characters (`< > &`) as
  entities, markdown emphasis, link and pipe characters escaped, newlines as `⏎`.
- `md_cell(s)`: a markdown table cell the program built (emphasis kept): HTML escaped, pipes and newlines escaped.
- `md_block(s)`: multi-line user text (a note) for a markdown quote: HTML escaped, lines kept.
- `from_argv(s)`: a command-line string Python decoded with `surrogateescape` (bytes that are not UTF-8) made
  into valid text (each undecodable byte becomes U+FFFD), so it can be tokenized, printed and written.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but \t \n, DEL, C1 controls; bidi embeddings/overrides/isolates (they reorder what the terminal shows);
# lone surrogates (invalid UTF-8 decoded with surrogateescape); zero-width no-break and line/paragraph separators.
_BIDI = "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
_CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}\u2028\u2029\ud800-\udfff]")
_CONTROL_ALL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029\ud800-\udfff]")


def _mark(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ ... ␟ (U+2400 control pictures): ␛ for ESC
    if code == 0x7F:
        return "␡"
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"
    return f"\\U{code:08x}"  # pragma: no cover - the pattern matches only the BMP


def visible(text: object, keep: str = "\n\t") -> str:
    """`text` with every control character shown as a visible mark; `keep` lists the ones left as they are
    (newline and tab by default; `keep=""` for one-line places)."""
    s = text if isinstance(text, str) else str(text)
    pattern = _CONTROL if keep == "\n\t" else _CONTROL_ALL
    if keep not in ("\n\t", ""):
        return "".join(ch if ch in keep else (_mark(ch) if _CONTROL_ALL.match(ch) else ch) for ch in s)
    if keep == "":
        s = s.replace("\n", "⏎").replace("\t", "⇥")
    return pattern.sub(lambda m: _mark(m.group()), s)


def plain(text: object, style: str = "", one_line: bool = False) -> Text:
    """User text as a rich `Text` (never parsed as markup), control characters visible."""
    return Text(visible(text, keep="" if one_line else "\n\t"), style=style)


def markup_escape(text: object) -> str:
    """User text for interpolation into a rich markup string: control characters visible, `[` escaped."""
    from rich.markup import escape

    return escape(visible(text))


def term_line(text: object) -> str:
    """One line of user text for a plain `print` to a terminal."""
    return visible(text, keep="")


# ---- XML / SVG ------------------------------------------------------------------------------------------------

# characters XML 1.0 does not allow at all (the C0 controls but \t \n \r, surrogates, U+FFFE/U+FFFF)
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_clean(document: str) -> str:
    """An XML document (an SVG rich drew) with every character XML 1.0 forbids made visible; markup untouched."""
    return _XML_BAD.sub(lambda m: _mark(m.group()), document)


def xml_text(text: object) -> str:
    """User text for an XML/SVG text node or attribute value: forbidden characters made visible, then `& < > " '`
    as entities. The result always parses as XML."""
    s = visible(text)  # terminal controls (ESC, C1) visible too: an SVG viewer need not see them either
    s = _XML_BAD.sub(lambda m: _mark(m.group()), s)
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


# ---- markdown -------------------------------------------------------------------------------------------------


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_inline(text: object) -> str:
    """User text inside a markdown line (a heading, a cell, inline text): no HTML, no emphasis, no links, no line
    break, no pipe that would end a table cell."""
    s = re.sub(r"([\\`*_\[\]|#!~])", r"\\\1", visible(text, keep=""))
    return _html(s)


def md_cell(text: object) -> str:
    """A markdown table cell the program built (it may hold `**bold**` around user tokens): HTML-significant
    characters as entities, pipes escaped, line breaks as `\\n`, control characters visible."""
    s = visible(text, keep="\n").replace("\\|", "|").replace("|", "\\|").replace("\n", "\\n")
    return _html(s)


def md_block(text: object) -> str:
    """Multi-line user text (a note) for markdown: HTML-significant characters as entities, control characters
    visible, the lines kept."""
    return _html(visible(text, keep="\n"))


_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def md_markdown(text: object) -> str:
    """Markdown attnscope wrote (a finding's body, read back from a findings file anyone may have edited): kept as
    markdown (tables, emphasis, code), but a raw HTML tag outside code becomes text (`<` before a letter, `/`, `!`
    or `?` is `&lt;`), so no `<script>` or `<img onerror=...>` reaches a renderer; control characters visible."""
    out, fenced = [], False
    for line in visible(text, keep="\n").split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            out.append(line)
            continue
        if fenced:
            out.append(line)
            continue
        parts = re.split(r"(`[^`]*`)", line)  # odd parts are inline code spans: literal already
        out.append("".join(p if i % 2 else _TAG_START.sub("&lt;", p) for i, p in enumerate(parts)))
    return "\n".join(out)


def md_code(text: object) -> str:
    """User text inside an inline code span (`` `...` ``): backticks and line breaks cannot end it early."""
    return visible(text, keep="").replace("`", "ˋ")


# ---- argv -----------------------------------------------------------------------------------------------------


def from_argv(text: str) -> str:
    """A command-line string as valid text: bytes that were not UTF-8 (lone surrogates from `surrogateescape`)
    become U+FFFD. Text that was valid is returned unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    text = re.sub("[\ud800-\udc7f\udd00-\udfff]", "\ufffd", text)  # surrogates that are no escaped byte
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
