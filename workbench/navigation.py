"""Jump back to where a finding was made: its prompt, layer and cell (explore), its feature's dashboard and trace
(feature), its head (heads), or its experiment's screen."""

from __future__ import annotations

from typing import Any

from workbench.findings import Finding


def finding_place(f: Finding) -> dict[str, Any]:
    """What a finding says about where it was made: screen, prompt, layer, pos, feature, head (absent when unknown)."""
    d = f.data if isinstance(f.data, dict) else {}
    place: dict[str, Any] = {"layer": f.layer}
    if isinstance(d.get("prompt"), str):
        place["prompt"] = d["prompt"]
    if isinstance(d.get("pos"), int):
        place["pos"] = d["pos"]
    feature = d.get("feature")
    iv = d.get("intervention")
    if feature is None and isinstance(iv, dict) and iv.get("features"):
        feature = iv["features"][0]
    if isinstance(feature, int):
        place["feature"] = feature
    screen = {"cell": "explore", "intervention": "explore", "feature": "feature", "trace": "feature", "head": "heads",
              "training": "training"}.get(f.kind)
    if f.kind == "experiment":
        screen = "induction" if "induction" in f.title.lower() or "induction" in str(d.get("experiment", "")) else "ioi"
    if isinstance(d.get("screen"), str):
        screen = d["screen"]
    place["screen"] = screen
    if f.kind == "head" and isinstance(d.get("head"), int):
        place["head"] = d["head"]
    return place


def go_to_finding(app: Any, f: Finding) -> None:
    from workbench.screens.explore import ExploreScreen
    from workbench.screens.heads import HeadsScreen

    p = finding_place(f)
    screen = p.get("screen")
    if screen is None:
        app.notify("this finding does not say where it was made", severity="warning")
        return
    if p.get("prompt") and screen in ("explore", "feature"):
        app.switch_mode("explore")
        explore = app.screen
        if isinstance(explore, ExploreScreen):
            explore.go_to(p["prompt"], p.get("layer"), p.get("pos"), p.get("feature"))
    if screen == "feature" and p.get("layer") is not None and p.get("feature") is not None:
        app.show_feature(p["layer"], p["feature"], pos=p.get("pos"), trace=f.kind == "trace")
    elif screen == "heads":
        app.switch_mode("heads")
        if isinstance(app.screen, HeadsScreen) and p.get("layer") is not None and p.get("head") is not None:
            app.screen.select_head(p["layer"], p["head"])
    elif screen != "explore":
        app.switch_mode(screen)
