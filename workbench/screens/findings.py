"""Pinned findings: list, read, edit a note, delete, export (`e`)."""

from __future__ import annotations

from pathlib import Path

from rich.markdown import Markdown
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from workbench.widgets.footer import WorkbenchFooter
from workbench.engine import plain
from workbench.findings import Finding, FindingsStore, export_markdown
from workbench.messages import FindingPinned
from workbench.screens.base import NavBar, StatusLine, WorkbenchScreen
from workbench.screens.modals import AskScreen


class StoreWatch:
    """Notices when another process changed the findings file. Uses the store's own `reload_if_changed()` when it
    has one, else the file's modification time and size."""

    def __init__(self, store: FindingsStore) -> None:
        self.store = store
        self.mark = self.read_mark()

    def read_mark(self) -> tuple[int, int] | None:
        try:
            st = self.store.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        """Re-read the file if it changed since last time; True when what it holds differs."""
        reload = getattr(self.store, "reload_if_changed", None)
        if reload is not None:
            return bool(reload())
        mark = self.read_mark()
        if mark == self.mark:
            return False
        self.mark = mark
        before = [(f.id, f.note) for f in self.store.findings]
        self.store.load()
        return [(f.id, f.note) for f in self.store.findings] != before


def restore_finding(store: FindingsStore, f: Finding, index: int | None = None) -> None:
    """Put a deleted finding back where it was (at `index`; through the store's locked change, so another
    instance's changes are kept)."""
    if index is None:
        store.add(f)
    else:
        store.insert(index, f)


class FindingsScreen(WorkbenchScreen):
    MODE = "findings"
    BINDINGS = [
        Binding("n", "edit_note", "Note", show=True),
        Binding("d", "delete", "Delete", show=True),
        Binding("u", "undo", "Undo delete", show=True),
        Binding("g", "go_to", "Go to where made", show=True),
        Binding("enter", "open_finding", "Open", show=True),
    ]
    POLL_S = 1.0  # how often to look for pins made by another running attnscope

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[tuple[int, Finding]] = []  # (index, finding), newest last: what u brings back

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield StatusLine("", id="findings-status")
        with Vertical(id="findings-body"):
            yield DataTable(id="findings-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="findings-side"):
                yield Static("", id="finding-view")
        yield WorkbenchFooter()

    def help_about(self) -> str:
        where = str(self.wb.findings.path).replace(str(Path.home()), "~", 1)
        return f"Findings are saved as you pin them, in {where}. e exports them all as markdown."

    def on_mount(self) -> None:
        self.watch = StoreWatch(self.wb.findings)
        self.reload()
        self.set_interval(self.POLL_S, self.poll_store)

    def action_go_to(self) -> None:
        """Back to where the selected finding was made (prompt, layer, cell, screen)."""
        f = self.selected()
        if f is None:
            self.query_one(StatusLine).error("no finding selected")
            return
        self.wb.go_to_finding(f)

    def main_widget(self) -> DataTable:
        return self.query_one("#findings-table", DataTable)

    def poll_store(self) -> None:
        """Show pins made (or notes edited) in another running instance: re-read the file when it changed."""
        if self.watch.changed():
            self.reload()

    def on_screen_resume(self) -> None:
        self.reload()

    def on_finding_pinned(self, _: FindingPinned) -> None:
        self.reload()

    def reload(self) -> None:
        store = self.wb.findings
        table = self.query_one("#findings-table", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        # widths from the content (an auto column would start at its header's width): titles whole up to 48
        title_w = min(48, max([len("title"), *(len(f.title) for f in store.findings)]))
        table.add_column("kind", width=10)
        table.add_column("title", width=title_w)
        table.add_column("note", width=max(10, table.size.width - title_w - 10 - 8))
        for f in store.findings:
            table.add_row(plain(f.kind, one_line=True), plain(f.title, one_line=True), plain(f.note, one_line=True),
                          key=f.id)
        if store.findings:
            table.move_cursor(row=min(row, len(store.findings) - 1))
        undo = " · u undoes the delete" if self.deleted else ""
        self.query_one(StatusLine).say(f"{len(store)} finding(s) · p pins on any screen · e exports{undo}")
        self.show_selected()

    def selected(self) -> Finding | None:
        store = self.wb.findings
        table = self.query_one("#findings-table", DataTable)
        if not store.findings or table.cursor_row is None or table.cursor_row >= len(store.findings):
            return None
        return store.findings[table.cursor_row]

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self.show_selected()

    def show_selected(self) -> None:
        f = self.selected()
        view = self.query_one("#finding-view", Static)
        if f is None:
            view.update(Text("nothing pinned yet: press p on any screen", style="dim"))
        else:
            text = export_markdown([f], title=f.title)
            number = self.wb.findings.findings.index(f) + 1  # its number in the list and in an export, not always 1
            section = text[text.find("\n## 1. ") + 1:].replace("## 1. ", f"## {number}. ", 1)
            view.update(Markdown(section))  # the finding's own section, no report header

    def action_edit_note(self) -> None:
        f = self.selected()
        if f is None:
            return

        def done(note: str | None) -> None:
            if note is not None:
                try:
                    self.wb.findings.set_note(f.id, note)
                except OSError as exc:  # FindingsError: deleted by another workbench, or the file cannot be written
                    self.notify(str(exc), title="Findings", severity="error")
                self.reload()

        self.app.push_screen(AskScreen(f"Note for “{f.title}”:", value=f.note), done)

    def action_delete(self) -> None:
        f = self.selected()
        if f is None:
            return
        index = self.wb.findings.findings.index(f)
        self.wb.findings.remove(f.id)
        self.deleted.append((index, f))
        self.notify(f"deleted: {f.title} · u brings it back", title="Findings")
        self.reload()

    def action_undo(self) -> None:
        """Bring back the finding deleted last (any number of deletions can be undone, newest first)."""
        if not self.deleted:
            self.query_one(StatusLine).say("nothing to undo")
            return
        index, f = self.deleted.pop()
        restore_finding(self.wb.findings, f, index)
        self.notify(f"restored: {f.title}", title="Findings")
        self.reload()
        self.query_one("#findings-table", DataTable).move_cursor(row=self.wb.findings.findings.index(f))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_finding()

    def action_open_finding(self) -> None:
        """Enter: go to what the finding is about (a feature's dashboard, the screen of an experiment or a head)."""
        f = self.selected()
        if f is None:
            return
        data = f.data or {}
        info = self.engine.info
        feature = data.get("feature")
        if f.layer is not None and isinstance(feature, int) and info is not None and f.layer in info.d_sae:
            other = f" (pinned with SAEs {f.saes}; now showing {info.saes})" if f.saes and f.saes != info.saes else ""
            self.wb.show_feature(f.layer, feature)
            if other:
                self.notify(f"L{f.layer} feature {feature}{other}", severity="warning")
            return
        mode = {"head": "heads", "training": "training"}.get(f.kind)
        if f.kind == "experiment":
            mode = "induction" if f.title.startswith("induction") else "ioi"
        if mode is not None:
            self.app.switch_mode(mode)
            return
        self.query_one("#findings-side", VerticalScroll).focus()
        self.query_one(StatusLine).say("this finding is read here (its text on the right); n edits its note")

    def current_finding(self) -> Finding | None:
        return None
