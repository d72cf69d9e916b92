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
            name = f"Screen: {label}" + (" (label random features)" if mode == "study" else "")
            out.append((name, partial(app.switch_mode, mode), f"key {key}"))
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
        out += self.actions()
        for d in app.engine.sae_sets():
            out.append((f"SAEs: {d}", partial(app.open_saes_spec, str(d)), "open this SAE set"))
        out.append(("Open SAEs from a path ...", app.action_open_saes, "key s on the explore screen"))
        out.append(("Pin what this screen shows", app.action_pin, "key p"))
        out.append(("Export findings as markdown", app.action_export, "key e"))
        out.append(("Help: keys of this screen", app.action_help, "key ?"))
        return out

    def actions(self) -> list[tuple[str, object, str]]:
        """What the app can do from anywhere: the palette runs the same actions as the screens' keys."""
        app = self.app
        out: list[tuple[str, object, str]] = []
        info = getattr(getattr(app, "engine", None), "info", None)
        if info is not None:
            layers = list(info.sae_layers)
            out.append(("Build dashboards of every SAE layer", partial(app.run_action_build, layers),
                        "one scan for layers " + ",".join(map(str, layers)) + "; resumable, ctrl+x cancels"))
            for layer in layers:
                out.append((f"Build dashboards of layer {layer}", partial(app.run_action_build, [layer]),
                            "the b key on the feature screen"))
        out.append(("Trace the selected heatmap cell", app.action_trace_cell, "key t on the explore screen"))
        out.append(("Run the induction experiment", partial(app.run_screen_action, "induction", "run"), "key r on screen 4"))
        out.append(("Run the IOI experiment", partial(app.run_screen_action, "ioi", "run"), "key r on screen 5"))
        out.append(("Train SAEs (start the training form)", partial(app.run_screen_action, "training", "start"), "key r on screen 6"))
        out.append(("Cancel the running job", app.action_cancel_job, "ctrl+x"))
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
