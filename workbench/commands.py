"""The command palette (Ctrl+P): screens, layers, feature ids, SAE directories, and the app's actions."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from workbench.screens.base import SCREENS


class WorkbenchCommands(Provider):
    """Commands are built fresh on every search, so they follow the open model and SAEs."""

    def commands(self, query: str = "") -> list[tuple[str, object, str]]:
        app = self.app
        out: list[tuple[str, object, str]] = []
        for mode, key, label in SCREENS:
            out.append((f"Screen: {label}", partial(app.switch_mode, mode), f"key {key}"))
        out.append(("Screen: Study (label random features)", partial(app.switch_mode, "study"), "key 8"))
        info = getattr(getattr(app, "engine", None), "info", None)
        if info is not None:
            for layer in info.sae_layers:
                out.append((f"Layer {layer}", partial(app.set_layer, layer), f"explore with the layer-{layer} SAE ({info.d_sae[layer]} features)"))
            q = query.strip().lower().removeprefix("feature").strip()
            if q.isdigit():
                fid = int(q)
                for layer in info.sae_layers:
                    if fid < info.d_sae[layer]:
                        out.append((f"Feature {fid} (layer {layer})", partial(app.show_feature, layer, fid), "open its dashboard"))
        for d in app.engine.sae_sets():
            out.append((f"SAEs: {d}", partial(app.open_saes_spec, str(d)), "open this SAE set"))
        out.append(("Open SAEs from a path ...", app.action_open_saes, "key s on the explore screen"))
        out.append(("Pin what this screen shows", app.action_pin, "key p"))
        out.append(("Export findings as markdown", app.action_export, "key e"))
        out.append(("Help: keys of this screen", app.action_help, "key ?"))
        return out

    async def discover(self) -> Hits:
        for name, cb, help_ in self.commands():
            yield DiscoveryHit(name, cb, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, cb, help_ in self.commands(query):
            score = matcher.match(name)
            if name.startswith("Feature ") and query.strip().lower().removeprefix("feature").strip().isdigit():
                score = max(score, 1.0)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_)
