"""Pinned findings: what a user keeps from a session (a feature, a head, a trace, an experiment result) with a note.

They live in one JSON file under the platformdirs data dir (`ATTNSCOPE_DATA_DIR` overrides it, which the tests
use), written atomically: a temp file in the same directory, fsync, then `os.replace`, so a crash leaves either the
old file or the new one. `export_markdown` turns them into one report.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sae.engine.errors import AttnscopeError

ENV_DATA_DIR = "ATTNSCOPE_DATA_DIR"
FILE_NAME = "findings.json"
KINDS = ("feature", "cell", "head", "trace", "experiment", "training", "note")


class ExportError(AttnscopeError):
    """The report could not be written where the user asked; one line for the user."""


def data_dir() -> Path:
    """Where attnscope keeps what the user made: `$ATTNSCOPE_DATA_DIR` or the platform's user data dir."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("attnscope"))


@dataclass
class Finding:
    """One pinned thing. `body` is markdown (tables, contexts with the active token in bold, text figures);
    `data` the plain data it came from, kept for later tools."""

    kind: str
    title: str
    note: str = ""
    body: str = ""
    model: str = ""
    saes: str = ""
    layer: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class FindingsStore:
    """The findings file. Every change is saved at once; a file that will not parse is moved aside, not lost."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else data_dir()
        self.path = self.directory / FILE_NAME
        self.findings: list[Finding] = []
        self.warning = ""
        self.load()

    def load(self) -> list[Finding]:
        self.findings = []
        if not self.path.exists():
            return self.findings
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            self.findings = [Finding.from_dict(d) for d in raw.get("findings", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{FILE_NAME}.unreadable-{int(time.time())}")
            os.replace(self.path, aside)
            self.warning = f"findings file could not be read ({exc.__class__.__name__}); kept it as {aside.name}"
        return self.findings

    def save(self) -> None:
        payload = {"version": 1, "findings": [asdict(f) for f in self.findings]}
        atomic_write_text(self.path, json.dumps(payload, indent=2, default=str))

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        self.save()
        return finding

    def remove(self, finding_id: str) -> Finding | None:
        for i, f in enumerate(self.findings):
            if f.id == finding_id:
                gone = self.findings.pop(i)
                self.save()
                return gone
        return None

    def set_note(self, finding_id: str, note: str) -> None:
        for f in self.findings:
            if f.id == finding_id:
                f.note = note
                self.save()
                return
        raise KeyError(finding_id)

    def __len__(self) -> int:
        return len(self.findings)


# ---- markdown -------------------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """Escape a token or label for a markdown table cell or inline text."""
    out = text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_").replace("`", "\\`")
    return out.replace("\n", "\\n").replace("\t", "\\t")


def md_context(tokens: list[str], active: int) -> str:
    """Tokens joined as text with the active one in bold (the report's example-context style)."""
    parts = []
    for i, tok in enumerate(tokens):
        esc = md_escape(tok)
        if i == active:
            lead = len(esc) - len(esc.lstrip(" "))
            esc = esc[:lead] + f"**{esc[lead:] or '␣'}**"
        parts.append(esc)
    return "".join(parts)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return md_escape(str(v))

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def md_bars(labels: list[str], values: list[float], width: int = 24) -> str:
    """A text figure: one signed bar per label, in a code block so it survives any markdown viewer."""
    max_abs = max((abs(v) for v in values), default=0.0) or 1.0
    lab_w = max((len(x) for x in labels), default=0)
    lines = []
    for lab, v in zip(labels, values):
        n = round(abs(v) / max_abs * width)
        bar = ("-" if v < 0 else "#") * n
        lines.append(f"{lab:<{lab_w}}  {bar:<{width}}  {v:+.4g}")
    return "```text\n" + "\n".join(lines) + "\n```"


def export_markdown(findings: list[Finding], title: str = "attnscope findings") -> str:
    """One report: a table of contents, then each finding's heading, provenance, note and body."""
    out = [f"# {title}", "", f"{len(findings)} finding(s), exported {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if findings:
        out.append(md_table(["#", "kind", "title", "model", "layer"], [
            [i + 1, f.kind, f.title, f.model, "" if f.layer is None else f.layer] for i, f in enumerate(findings)
        ]))
        out.append("")
    for i, f in enumerate(findings, 1):
        out.append(f"## {i}. {md_escape(f.title)}")
        out.append("")
        prov = [f"kind: {f.kind}", f"pinned {f.created}"]
        if f.model:
            prov.append(f"model: `{f.model}`")
        if f.saes:
            prov.append(f"SAEs: `{f.saes}`")
        if f.layer is not None:
            prov.append(f"layer {f.layer}")
        out.append("*" + " · ".join(prov) + "*")
        out.append("")
        if f.note.strip():
            out.append("> " + f.note.strip().replace("\n", "\n> "))
            out.append("")
        if f.body.strip():
            out.append(f.body.strip())
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_export(path: str | Path, text: str) -> Path:
    """Write the report; an unwritable place is an `ExportError` with one line, the findings stay untouched."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ExportError("no export path given")
    if p.is_dir():
        raise ExportError(f"{p} is a directory; give a file name such as {p / 'findings.md'}")
    if not p.parent.exists():
        raise ExportError(f"cannot write {p}: the folder {p.parent} does not exist")
    try:
        atomic_write_text(p, text)
    except OSError as exc:
        raise ExportError(f"cannot write {p}: {exc.strerror or exc}") from exc
    return p
