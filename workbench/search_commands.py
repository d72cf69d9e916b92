"""The command palette's feature search (Ctrl+P): `token: the`, `text: drink`, `label: name mover`,
`role: induction`, and `here` (the strongest features at the explore screen's selected token over the whole SAE).
Choosing a hit opens the feature's dashboard."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider

from workbench.screens.base import Failure, ask_engine

PREFIXES = {"token": "token", "tok": "token", "text": "text", "label": "label", "role": "role", "family": "role"}
HELP = [
    ("token: WORD", "features that fire most on this token in the dashboards (mean activation)"),
    ("text: FRAGMENT", "features whose top examples contain the text"),
    ("label: TEXT", "features with a human label (family or note) that contains the text"),
    ("role: ROLE", "features of a family or automatic role (induction, previous-token, ...)"),
    ("here", "the strongest features at the explore screen's selected token, over the whole SAE"),
]


def parse_query(query: str) -> tuple[str, str] | None:
    """`token: the` -> ("token", "the") (the text after ': ' kept as typed, so ' the' keeps its space); `here` ->
    ("position", ""); anything else -> None."""
    q = query.lstrip()
    if q.strip().lower() in ("here", "position", "at here"):
        return "position", ""
    head, sep, rest = q.partition(":")
    kind = PREFIXES.get(head.strip().lower())
    if not sep or kind is None:
        return None
    rest = rest[1:] if rest.startswith(" ") and rest[1:].strip() else rest
    return (kind, rest) if rest.strip() else None


class FeatureSearch(Provider):
    async def discover(self) -> Hits:
        for example, help_ in HELP:
            yield DiscoveryHit(f"Search features: {example}", partial(self._prefill, example), help=help_)

    def _prefill(self, example: str) -> None:
        """Open the palette again with the search's prefix typed (`token: `), ready for the word."""
        text = example.split(":")[0] + ": " if ":" in example else example
        app = self.app

        def fill() -> None:
            from textual.command import CommandInput, CommandPalette

            if isinstance(app.screen, CommandPalette):
                box = app.screen.query_one(CommandInput)
                box.value = text
                box.cursor_position = len(text)

        def reopen() -> None:
            app.action_command_palette()
            app.call_after_refresh(fill)

        app.call_after_refresh(reopen)

    async def search(self, query: str) -> Hits:
        parsed = parse_query(query)
        if parsed is None:  # not a search yet: the searches themselves, as hints that type their prefix
            matcher = self.matcher(query)
            for example, help_ in HELP:
                name = f"Search features: {example}"
                score = matcher.match(name)
                if score > 0:
                    yield Hit(score, matcher.highlight(name), partial(self._prefill, example), help=help_)
            return
        kind, text = parsed
        app = self.app
        prompt, pos = "", -1
        if kind == "position":
            from workbench.screens.explore import ExploreScreen

            explore = next(iter(app.screens_of(ExploreScreen)), None)  # type: ignore[attr-defined]
            if explore is None or explore.result is None:
                yield Hit(1000.0, Text("run a prompt on the explore screen first"), lambda: None)
                return
            prompt, pos = explore.prompt, explore.selected_pos()
        failed: list[Failure] = []  # shown as the palette's one line (a bug: logged with its traceback first)
        hits = await ask_engine(app.engine.search(kind, text, prompt=prompt, pos=pos),  # type: ignore[attr-defined]
                                failed.append, "command palette search")
        if failed:
            yield Hit(1000.0, Text(failed[0].text, style="red"), lambda: None)
            return
        if hits is None:  # a newer search made this one stale
            return
        n = len(hits)
        for i, h in enumerate(hits):
            label = Text(f"L{h.layer} F{h.feature}  ", style="bold")
            label.append(f"{h.score:.3g}  ", style="cyan")
            label.append(h.why[:70], style="dim")
            # the palette sorts by score: above every fuzzy match of the query's words, in the search's order
            yield Hit(1000.0 - i / (n + 1), label, partial(app.show_feature, h.layer, h.feature),  # type: ignore[attr-defined]
                      text=f"L{h.layer} F{h.feature}", help="open its dashboard")
