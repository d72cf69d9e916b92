"""Pinned findings: what a user keeps from a session (a feature, a head, a trace, an experiment result) with a note.

They live in one JSON file under the platformdirs data dir (`ATTNSCOPE_DATA_DIR` overrides it, which the tests
use), written atomically: a temp file in the same directory, fsync, then `os.replace`, so a crash leaves either the
old file or the new one. Several workbenches may share the file: every change takes a lock (`findings.json.lock`),
re-reads the file and applies itself to what is there, so no instance loses another's pins;
`FindingsStore.reload_if_changed()` tells an instance that another one wrote. `export_markdown` turns them into one
report.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from sae.engine.errors import AttnscopeError
from sae.engine.safe_text import md_block, md_code, md_inline, md_markdown
from sae.engine.safe_io import DirLock, LockedError, OutputError, atomic_write_text as safe_write_text
from sae.engine.safe_io import UnreadableFileError
from sae.engine.safe_io import resolve_output as _resolve_output
from sae.engine.schema import FileFormatError, Float, Int, List, Obj, Optional, Str, check, parse_json, read_json


ENV_DATA_DIR = "ATTNSCOPE_DATA_DIR"
FILE_NAME = "findings.json"
KINDS = ("feature", "cell", "head", "trace", "experiment", "training", "note", "intervention")


class ExportError(AttnscopeError):
    """The report could not be written where the user asked; one line for the user."""


class FindingsError(AttnscopeError, OSError):
    """The findings file cannot be read (corrupt, wrong field types) or written; one line for the user. An
    OSError too, so callers that catch a failed save keep working."""

    def __init__(self, message: str) -> None:
        AttnscopeError.__init__(self, message)


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
    def from_dict(cls, d: Any, file: str | Path = FILE_NAME, where: str = "finding") -> "Finding":
        """A finding from its JSON form, read through the schema (`FINDING_SPEC`): a wrong type, a wrong shape or
        a missing field is one `FileFormatError` naming `file` and the field (`where.layer`); keys this version
        does not know are ignored."""
        kept = check(d, FINDING_SPEC, file, where)
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in kept.items() if k in names}
        for name in ("id", "created"):  # absent: made fresh, as for a new pin
            if given[name] is None:
                del given[name]
        return cls(**given)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves the old file or the new one, never half of either (the
    umask's mode, symlinks written through, one-line OutputError on a full disk or read-only place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safe_write_text(path, text)


LOCK_TIMEOUT_S = 10.0


# findings.json, read through the one schema layer (`sae.engine.schema`): `findings` is required (an object
# without it is not a findings file, and a truncated file is never read as "0 findings").
FINDING_SPEC = Obj(
    required={"kind": Str(nonempty=True), "title": Str()},
    optional={"note": (Str(), ""), "body": (Str(), ""), "model": (Str(), ""), "saes": (Str(), ""),
              "layer": (Optional(Int(min=0)), None), "data": (Obj(), {}),
              "id": (Optional(Str(nonempty=True, max_len=200)), None), "created": (Optional(Str()), None)},
)
FINDINGS_SPEC = Obj(required={"findings": List(Obj())}, optional={"version": (Int(min=1), 1)})


def findings_from_data(data: Any, file: str | Path = FILE_NAME) -> list[Finding]:
    """The findings of parsed findings.json data; one `FileFormatError` naming `file` and the field (such as
    `findings[2].layer`) for a wrong type or shape, a missing field, or two findings with one id."""
    d = check(data, FINDINGS_SPEC, file)
    out: list[Finding] = []
    seen: set[str] = set()
    for i, item in enumerate(d["findings"]):
        f = Finding.from_dict(item, file, f"findings[{i}]")
        if f.id in seen:
            raise FileFormatError(file, f"findings[{i}].id", "an id no other finding has", f.id)
        seen.add(f.id)
        out.append(f)
    return out


def parse_findings(text: str, file: str | Path = FILE_NAME) -> list[Finding]:
    """The findings of a findings.json text; `FileFormatError` (one line naming the file and field) for JSON that
    does not parse, NaN, deep nesting, or a finding of the wrong shape."""
    return findings_from_data(parse_json(text, file), file)


def read_findings(path: str | Path) -> list[Finding]:
    """The findings in the file at `path` (regular files only, `sae.engine.schema.read_json`);
    FileNotFoundError passes through, everything else is one line (`UnreadableFileError`, `FileFormatError`)."""
    return findings_from_data(read_json(path, "findings file"), path)


# The figure data a finding may carry (`Finding.data`), checked before an export draws it.
HEATMAP_SPEC = Obj(required={"tokens": List(Str(), min_len=1), "columns": List(Int(), min_len=1),
                             "values": List(List(Float(finite=False)))},
                   optional={"column": (Optional(Int()), None)})
FIGURE_DATA_SPEC = Obj(optional={
    "heatmap": (Optional(HEATMAP_SPEC), None), "pos": (Optional(Int()), None), "dfa_heads": (List(Float()), []),
    "dfa_bias": (Float(), 0.0), "dfa_src": (List(Float()), []), "head_shares": (List(Float()), []),
    "bars": (Optional(Obj({"labels": List(Str()), "values": List(Float())}, optional={"title": (Str(), "")})), None),
})


def check_figure_data(f: Finding, index: int, file: str | Path = FILE_NAME) -> dict[str, Any]:
    """`f.data` checked as figure data (`FIGURE_DATA_SPEC` plus the shapes that must agree); one-line
    `FileFormatError` naming `findings[index].data.<field>` otherwise."""
    where = f"findings[{index}].data"
    d = check(f.data or {}, FIGURE_DATA_SPEC, file, where)
    hm = d["heatmap"]
    if hm is not None:
        n_tok, n_col = len(hm["tokens"]), len(hm["columns"])
        if len(hm["values"]) != n_tok or any(len(row) != n_col for row in hm["values"]):
            raise FileFormatError(file, f"{where}.heatmap.values", f"{n_tok} rows of {n_col} numbers (tokens x "
                                  "columns)", has_got=False)
    if d["dfa_src"] and (hm is None or len(d["dfa_src"]) > len(hm["tokens"])):
        raise FileFormatError(file, f"{where}.dfa_src", "at most one number per heatmap token", has_got=False)
    bars = d["bars"]
    if bars is not None and len(bars["labels"]) != len(bars["values"]):
        raise FileFormatError(file, f"{where}.bars", "as many values as labels", has_got=False)
    return d


class FindingsStore:
    """The findings file. Every change is saved at once, under a lock, merged into what is on disk.

    A file that will not parse is never moved or rewritten silently: `error` says why (the export refuses with
    it), `warning` is shown by the workbench, and the first change made afterwards keeps the damaged file as
    `findings.json.unreadable-TIME` (said in `warning`) before writing."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else data_dir()
        self.path = self.directory / FILE_NAME
        self.lock_path = self.directory / (FILE_NAME + ".lock")
        self.findings: list[Finding] = []
        self.warning = ""
        self.error = ""
        self._seen: tuple[int, int, int] | None = None
        self.load()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> list[Finding]:
        """What is on disk now; sets `error`/`warning` for a damaged file (which stays where it is)."""
        self.error = ""
        if not self.path.exists():
            return []
        try:
            return read_findings(self.path)
        except FileNotFoundError:  # removed since the check above
            return []
        except (FileFormatError, UnreadableFileError) as exc:  # one line naming the file (and the field)
            self.error = f"the findings file cannot be read: {exc}"
            self.warning = self.error + "; it is kept as it is"
            return []

    def load(self) -> list[Finding]:
        self._seen = self._signature()
        self.findings = self._read()
        return self.findings

    def reload_if_changed(self) -> bool:
        """Re-read the file when another instance (or anything) changed it since this one last read or wrote;
        True when it did. Costs one `stat` when nothing changed."""
        if self._signature() == self._seen:
            return False
        self.load()
        return True

    def _change(self, apply: Callable[[list[Finding]], Any]) -> Any:
        """Lock, re-read, apply `apply(findings)` to the fresh list, write, unlock; returns what `apply` did."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = DirLock(self.directory, what="attnscope findings", lock_path=self.lock_path)
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except (LockedError, OutputError) as exc:
            raise FindingsError(f"cannot save findings: {exc}") from None
        except OSError as exc:
            raise FindingsError(f"cannot save findings in {self.directory}: {exc.strerror or exc}") from None
        try:
            current = self._read()
            if self.error:  # keep the damaged file beside, say so, then start a fresh file
                aside = self.path.with_name(f"{FILE_NAME}.unreadable-{int(time.time())}")
                try:
                    os.replace(self.path, aside)
                except OSError as exc:
                    raise FindingsError(f"{self.error}; cannot keep it aside: {exc.strerror or exc}") from None
                self.warning = f"{self.error}; kept it as {aside.name}"
                self.error = ""
            result = apply(current)
            payload = {"version": 1, "findings": [asdict(f) for f in current]}
            try:
                atomic_write_text(self.path, json.dumps(payload, indent=2, default=str))
            except OutputError as exc:
                raise FindingsError(str(exc)) from None
            self.findings = current
            self._seen = self._signature()
            return result
        finally:
            lock.release()

    def save(self) -> None:
        """Write this instance's list, merged with the file: findings another instance added are kept."""
        mine = list(self.findings)

        def apply(current: list[Finding]) -> None:
            ids = {f.id for f in mine}
            current[:] = mine + [f for f in current if f.id not in ids]

        self._change(apply)

    def add(self, finding: Finding) -> Finding:
        def apply(current: list[Finding]) -> None:
            if all(f.id != finding.id for f in current):
                current.append(finding)

        self._change(apply)
        return finding

    def insert(self, index: int, finding: Finding) -> Finding:
        """Put `finding` back at `index` (clamped; what undo of a delete does), unless it is there already."""

        def apply(current: list[Finding]) -> None:
            if all(f.id != finding.id for f in current):
                current.insert(max(0, min(index, len(current))), finding)

        self._change(apply)
        return finding

    def remove(self, finding_id: str) -> Finding | None:
        def apply(current: list[Finding]) -> Finding | None:
            for i, f in enumerate(current):
                if f.id == finding_id:
                    return current.pop(i)
            return None

        return self._change(apply)

    def set_note(self, finding_id: str, note: str) -> None:
        def apply(current: list[Finding]) -> bool:
            for f in current:
                if f.id == finding_id:
                    f.note = note
                    return True
            return False

        if not self._change(apply):
            raise FindingsError("that finding is no longer pinned (deleted in another window?); the note was not saved")

    def __len__(self) -> int:
        return len(self.findings)


# ---- markdown -------------------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """Escape a token or label for a markdown table cell or inline text: no HTML, emphasis, link, pipe or line
    break; control characters visible (`sae.engine.safe_text.md_inline`)."""
    return md_inline(text)


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


MD_DECIMALS = 3  # decimals of a lone number in an export; a column's decimals follow its largest value


def column_decimals(values: list[float]) -> int:
    """Decimals for one column of numbers: 4 significant digits for its largest |value|, the same for every row
    (so the column is aligned, never ragged like per-number `.4g`), between 0 and 6."""
    import math

    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if top == 0:
        return MD_DECIMALS
    return max(0, min(6, 3 - math.floor(math.log10(top))))


def md_number(v: float, signed: bool = False, decimals: int = MD_DECIMALS) -> str:
    """A number as exports write it: fixed decimals, with a sign when `signed` (a column holding negative
    values)."""
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if abs(v) >= 1e6:
        return f"{v:+.3e}" if signed else f"{v:.3e}"
    return f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; each column of numbers in one format (fixed decimals, signed when any is negative),
    numbers right-aligned."""
    column = [[r[c] for r in rows if c < len(r) and isinstance(r[c], float)] for c in range(len(headers))]
    floats = [bool(col) for col in column]
    signed = [any(v < 0 for v in col) for col in column]
    decimals = [column_decimals(col) for col in column]

    def cell(c: int, v: Any) -> str:
        if isinstance(v, float):
            return md_number(v, signed[c], decimals[c])
        return md_escape(str(v))

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("--:" if floats[c] else "---" for c in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines)


def md_bars(labels: list[str], values: list[float], width: int = 24) -> str:
    """A text figure: one signed bar per label, in a code block so it survives any markdown viewer."""
    max_abs = max((abs(v) for v in values), default=0.0) or 1.0
    lab_w = max((len(x) for x in labels), default=0)
    lines = []
    decimals = column_decimals([float(v) for v in values])
    for lab, v in zip(labels, values):
        n = round(abs(v) / max_abs * width)
        bar = ("-" if v < 0 else "#") * n
        lines.append(f"{lab:<{lab_w}}  {bar:<{width}}  {md_number(v, signed=True, decimals=decimals)}")
    return "```text\n" + "\n".join(lines) + "\n```"


def export_markdown(findings: list[Finding], title: str = "attnscope findings") -> str:
    """One report: a table of contents, then each finding's heading, provenance, note and body."""
    out = [f"# {md_inline(title)}", "", f"{len(findings)} finding(s), exported {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if findings:
        out.append(md_table(["#", "kind", "title", "model", "layer"], [
            [i + 1, f.kind, f.title, f.model, "" if f.layer is None else f.layer] for i, f in enumerate(findings)
        ]))
        out.append("")
    for i, f in enumerate(findings, 1):
        out.append(f"## {i}. {md_escape(f.title)}")
        out.append("")
        prov = [f"kind: {md_inline(f.kind)}", f"pinned {md_inline(f.created)}"]
        if f.model:
            prov.append(f"model: `{md_code(f.model)}`")
        if f.saes:
            prov.append(f"SAEs: `{md_code(f.saes)}`")
        if f.layer is not None:
            prov.append(f"layer {f.layer}")
        out.append("*" + " · ".join(prov) + "*")
        out.append("")
        if f.note.strip():
            out.append("> " + md_block(f.note.strip()).replace("\n", "\n> "))
            out.append("")
        if f.body.strip():  # attnscope's markdown, but read back from a file: no raw HTML tag survives
            out.append(md_markdown(f.body.strip()))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def check_export_target(path: str | Path) -> Path:
    """The report's path if a report can be written there, else `ExportError` (one line) before anything is
    written: an empty path, a directory, a missing folder, a device or FIFO, a read-only file, the installed
    package, an unwritable folder."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ExportError("no export path given")
    if p.is_dir():
        raise ExportError(f"{p} is a directory; give a file name such as {p / 'findings.md'}")
    if not p.parent.exists():
        raise ExportError(f"cannot write {p}: the folder {p.parent} does not exist")
    try:
        _resolve_output(p)
    except OutputError as exc:
        raise ExportError(str(exc)) from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {p}: the folder {p.parent} is not writable")
    return p


def write_export(path: str | Path, text: str) -> Path:
    """Write the report; an unwritable place is an `ExportError` with one line, the findings stay untouched.

    Symlinks the user named are written through (the link stays), devices, FIFOs, directories and read-only
    files are refused; `export_replaces(path)` beforehand tells whether an existing file will be replaced."""
    p = check_export_target(path)
    try:
        safe_write_text(p, text)
    except OutputError as exc:
        raise ExportError(str(exc)) from None
    return p



def export_replaces(path: str | Path) -> bool:
    """Whether writing the report to `path` replaces an existing regular file (through a symlink too)."""
    return Path(os.path.realpath(Path(path).expanduser())).is_file()
