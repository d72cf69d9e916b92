"""What every command shares: model/SAE flags, output flags, one-line errors, progress bars."""

from __future__ import annotations

import argparse
import json
import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.table import Table
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment

from sae.engine.errors import AttnscopeError
from sae.engine.safe_text import md_cell, plain, term_line, visible

if TYPE_CHECKING:
    from sae.engine.jobs import Progress as JobProgress
    from sae.engine.jobs import ProgressFn


class SafeConsole(Console):
    """A rich Console that never lets a control character of the text it prints reach the terminal: ESC, NUL,
    OSC/CSI bytes, bidi overrides in a prompt, a token, a path or a note are shown as visible marks (`␛`). Rich's
    own styles and cursor moves (style and control segments) are untouched. Every CLI print goes through one."""

    def _render_buffer(self, buffer: Any) -> str:
        safe = (seg if seg.control else Segment(visible(seg.text), seg.style, seg.control) for seg in buffer)
        return super()._render_buffer(safe)


console = SafeConsole(stderr=True)
out = SafeConsole(soft_wrap=True)


_NUMBER = re.compile(r"^[\s+\-−]?[\d.,]+(e[+-]?\d+)?%?\s*$|^[+\-]?(nan|inf)$", re.IGNORECASE)


def _cell_text(cell: Any) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


class FitTable(Table):
    """A rich `Table` that never ellipsizes a number: in a narrow terminal a column of numbers keeps the width of
    its longest number (its header wraps instead), and text columns fold onto more lines. Every CLI table is one
    of these (`from sae.cli.common import FitTable as Table`).

    Its text is never markup: a str title or cell is shown as it is (a family named `[/]` is that name); a
    styled cell is a `rich.text.Text`."""

    def __init__(self, *headers: Any, title: Any = None, **kwargs: Any) -> None:
        super().__init__(*headers, title=plain(title) if isinstance(title, str) else title, **kwargs)

    def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().add_column(plain(header) if isinstance(header, str) else header, *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().add_row(*(plain(c) if isinstance(c, str) else c for c in cells), **kwargs)

    def __rich_console__(self, console: Console, options: Any) -> Any:
        from rich import box

        need = 0
        for i, col in enumerate(self.columns):
            cells = [_cell_text(c) for c in col._cells]  # noqa: SLF001 - rich keeps a column's cells there
            words = [w for c in cells for w in c.split()]
            numeric = i > 0 and cells and all(_NUMBER.match(c) or not c.strip() for c in cells)
            col.overflow = "fold"
            if numeric:
                col.no_wrap = True
                col.min_width = max(len(c) for c in cells)
            else:  # at least its longest word (a head name, a token) up to 16 cells
                col.min_width = min(max((len(w) for w in words), default=1), 16)
            need += col.min_width + 3
        if need + 1 > options.max_width:  # too narrow for boxes: one space between columns, a rule under the header
            self.box = box.SIMPLE_HEAD
            self.padding = (0, 1)
            self.collapse_padding = True
            self.pad_edge = False
            self.show_edge = False
        yield from super().__rich_console__(console, options)


class UsageError(AttnscopeError):
    """Bad input from the user: printed as one line `attnscope: error: ...`, exit code 2."""


def fail(message: str, code: int = 2) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"attnscope: error: {term_line(first)}", file=sys.stderr)
    return code


BUG_EXIT = 1  # a bug's exit status (a user error's is 2)


def bug(exc: BaseException, where: str = "") -> int:
    """A bug (an exception that is not an `AttnscopeError`): its traceback appended to the bug log
    (`sae.engine.errors.record_bug`), one line here: `attnscope: bug: <type>: <message> (traceback in <path>)`;
    exit 1. With `ATTNSCOPE_TRACEBACK=1` in the environment the traceback is printed here as well."""
    import os
    import traceback

    from sae.engine.errors import record_bug

    line = record_bug(exc, where)
    if os.environ.get("ATTNSCOPE_TRACEBACK"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"attnscope: {term_line(line)}", file=sys.stderr)
    return BUG_EXIT


def guarded(run: Callable[[], int], where: str) -> int:
    """The CLI's and the workbench's error rule, in one place: `run()`'s status; an `AttnscopeError` is its one
    line and exit 2, an `OSError` of the user's environment (permission, full or read-only disk) one line and 2,
    ctrl+c exit 130, anything else a bug (`bug`, exit 1). `where` names the command in the bug log."""
    from sae.engine.safe_io import environment_error_line

    try:
        return int(run() or 0)
    except AttnscopeError as exc:  # every error meant for the user, caught once
        return fail(str(exc))
    except OSError as exc:
        line = environment_error_line(exc)
        return bug(exc, where) if line is None else fail(line)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: its traceback to the bug log, one line here
        return bug(exc, where)


def measurements_markdown(head: str, rows: list[tuple[str, str]]) -> list[str]:
    """A heading line and a two-column `| measurement | value |` markdown table, as lines."""
    return [head, "", "| measurement | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def print_measurements(title: str, rows: list[tuple[str, str]]) -> None:
    """The same table, drawn (values right-aligned)."""
    t = FitTable(title=title)
    t.add_column("measurement")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


def open_model(name: str, device: str = "auto", dtype: str = "float32"):
    """The one door from the CLI to a model: `sae.zoo.load_model` ("default" is the embedded model). A model that
    will not load is a `ModelLoadError`, which `main` prints as one line (exit 2)."""
    from sae.zoo import load_model

    return load_model(name, device=device, dtype=dtype)


def open_training_model(name: str, device: str = "auto"):
    """The model `attnscope train` reads z from (`sae.zoo.load_training_model`: bridge-free for a local GPT-2)."""
    from sae.zoo import load_training_model

    return load_training_model(name, device=device)


def add_model_flags(p: argparse.ArgumentParser, saes: bool = True) -> None:
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    if saes:
        p.add_argument(
            "--saes", default="default", help="SAE dir, dir of SAE dirs, or release id (default: the embedded SAEs)"
        )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32",
                   help="float32, bfloat16 or float16, for the model and its SAEs (bfloat16 halves their memory)")


def add_feature_target(p: argparse.ArgumentParser, pos_help: str) -> None:
    """The arguments naming one feature at one position of a prompt: `prompt`, `--layer`, `--feature`, `--pos`."""
    p.add_argument("prompt", help="the text to analyse")
    p.add_argument("--layer", type=non_negative_int, required=True, help="layer of the feature")
    p.add_argument("--feature", type=non_negative_int, required=True, help="feature id in that layer's SAE")
    p.add_argument("--pos", type=int, default=None, help=pos_help)


def add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    g.add_argument("--md", action="store_true", help="print markdown (for notes)")


def emit(args: argparse.Namespace, data: Any, markdown: Callable[[Any], str], pretty: Callable[[Any], None] | None = None) -> None:
    """One computation, three faces: JSON, markdown, or a rich rendering (markdown when no pretty form)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=_json_default))
    elif getattr(args, "md", False) or pretty is None:
        print(visible(markdown(data)))  # no terminal control characters from the user's text
    else:
        pretty(data)


Tables = list[tuple[str, list[str], list[list[str]]]]  # (title, column names, rows of cell strings)


def tables_markdown(head: str, tables: Tables) -> str:
    """A heading line then one markdown table per (title, columns, rows)."""
    parts = [head]
    for title, cols, rows in tables:
        parts += [f"\n**{title}**\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        parts += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(parts)


def print_tables(head: str, tables: Tables, bold_row: Callable[[list[str]], bool] = lambda row: False) -> None:
    """The same tables as rich tables on stdout; the first two columns left-aligned, the rest right."""
    out.print(head)
    for title, cols, rows in tables:
        t = FitTable(title=title, title_justify="left")
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i < 2 else "right")
        for row in rows:
            t.add_row(*row, style="bold" if bold_row(row) else None)
        out.print(t)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    return str(o)


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v}")
    return v


@contextmanager
def job_progress(description: str, enabled: bool = True, transient: bool = True,
                 describe: Callable[["JobProgress"], str] | None = None) -> Iterator["ProgressFn"]:
    """The CLI's one progress bar, on stderr, fed by a job's `Progress` reports (the one job protocol,
    `sae.engine.jobs`): done of total in its unit, rate, ETA and the stage (or `describe(progress)`); silent when
    stderr is not a terminal or `enabled` is False."""
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stage]}")]
    with Progress(*cols, console=console, transient=transient, disable=not (enabled and console.is_terminal)) as prog:
        task = prog.add_task(description, total=None, rate="", stage="")

        def on_progress(p: JobProgress) -> None:
            prog.update(task, completed=p.done, total=p.total or None, stage=describe(p) if describe else p.stage,
                        rate=f"{p.rate:,.0f} {p.unit}/s" if p.rate else "")

        yield on_progress
