"""Pinned findings: list, read, edit a note, delete, export (`e`)."""

from __future__ import annotations

from rich.markdown import Markdown
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Static

from workbench.findings import Finding, export_markdown
from workbench.messages import FindingPinned
from workbench.screens.base import NavBar, StatusLine, WorkbenchScreen
from workbench.screens.modals import AskScreen


class FindingsScreen(WorkbenchScreen):
    MODE = "findings"
    BINDINGS = [
        Binding("n", "edit_note", "Note", show=True),
        Binding("d", "delete", "Delete", show=True),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield StatusLine("", id="findings-status")
        with Horizontal(id="findings-body"):
            yield DataTable(id="findings-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="findings-side"):
                yield Static("", id="finding-view")
        yield Footer()

    def help_about(self) -> str:
        return f"Findings are saved as you pin them, in {self.wb.findings.path}. e exports them all as markdown."

    def on_mount(self) -> None:
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
        table.add_columns("kind", "title", "note")
        for f in store.findings:
            table.add_row(f.kind, f.title, f.note[:30], key=f.id)
        if store.findings:
            table.move_cursor(row=min(row, len(store.findings) - 1))
        self.query_one(StatusLine).say(f"{len(store)} finding(s) · p pins on any screen · e exports")
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
            view.update(Markdown(export_markdown([f], title=f.title).split("\n", 1)[1]))

    def action_edit_note(self) -> None:
        f = self.selected()
        if f is None:
            return

        def done(note: str | None) -> None:
            if note is not None:
                self.wb.findings.set_note(f.id, note)
                self.reload()

        self.app.push_screen(AskScreen(f"Note for “{f.title}”:", value=f.note), done)

    def action_delete(self) -> None:
        f = self.selected()
        if f is not None:
            self.wb.findings.remove(f.id)
            self.notify(f"deleted: {f.title}")
            self.reload()

    def current_finding(self) -> Finding | None:
        return None
