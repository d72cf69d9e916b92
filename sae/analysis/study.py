"""One layer of the labelling study, as the workbench's study screen needs it: the sampled live features, the
SAE's id for the label store, and each sampled feature's automatic role as a suggestion beside the human label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from sae.analysis.dashboards import DashboardError, build_command, is_built
from sae.engine.jobs import CancelToken, ProgressFn

if TYPE_CHECKING:
    from sae.engine.autoencoder import SAE
    from sae.analysis.roles import LayerRoles
    from sae.engine.models import LoadedModel


@dataclass(frozen=True)
class StudyLayer:
    """The features of one layer to label, in labelling order, with their automatic role suggestions."""

    model: str
    layer: int
    sae: str  # the SAE's content hash: the label store's key
    n: int
    seed: int
    n_live: int
    features: tuple[int, ...]
    auto: Mapping[int, str] = field(default_factory=dict)  # feature -> automatic role (sae.analysis.roles.LayerRoles)
    auto_note: str = ""  # how the induction test went


def study_layer(
    model: "LoadedModel", sae: "SAE", layer: int, n: int, seed: int, confirm: bool = True,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None, roles: "LayerRoles | None" = None,
) -> StudyLayer:
    """Sample `n` live features of `layer` (seeded) from its built dashboards and suggest their automatic roles.

    roles: the layer's `LayerRoles` (the workbench passes the one its other screens ask, so a feature has one role
    everywhere); else scored here. Only the sampled induction candidates get the repeated-random-token test (the
    rest of the layer is not shown); its seed is `roles.CONFIRM_SEED`, not the sampling seed. DashboardError
    (naming the build command) when the layer's dashboards are not built."""
    from sae.analysis.dashboards import dashboard_dir
    from sae.analysis.labels import sae_id_of, sample_features
    from sae.analysis.roles import LayerRoles, model_confirmer

    directory = dashboard_dir(model, sae, layer)
    if not is_built(directory):
        raise DashboardError(f"dashboards for layer {layer} are not built yet; run `{build_command(layer)}`")
    if roles is None:
        conf = model_confirmer(model, sae, layer, on_progress=on_progress, cancel=cancel) if confirm else None
        roles = LayerRoles(directory, confirm=conf)
    live = roles.live
    features = sample_features(live, n, seed, layer) if live else []
    auto = roles.roles(features)
    sae_id, name = sae_id_of(directory)
    return StudyLayer(
        model=name or str(getattr(model, "name", "")), layer=layer, sae=sae_id, n=n, seed=seed, n_live=len(live),
        features=tuple(features), auto={f: auto[f] or "other" for f in features}, auto_note=roles.note(features),
    )


def study_report_for(store: Any, layers: "list[StudyLayer] | tuple[StudyLayer, ...]") -> Any:
    """The study report (`sae.analysis.labels.StudyReport`) of the labels of these layers' SAEs, with each layer's
    automatic-role agreement computed from the suggestions the study showed (sampled features only)."""
    from sae.analysis.labels import RATINGS, StudyReport, layer_shares
    from sae.analysis.roles import agreement

    fams = store.families()
    labs = [lab for sl in layers for lab in store.labels(sae=sl.sae, layer=sl.layer)]
    rep = StudyReport(families=fams, ratings=dict(RATINGS), layers=layer_shares(labs, fams))
    for sl in layers:
        human = {lab.feature: lab.family for lab in labs if lab.sae == sl.sae and lab.layer == sl.layer}
        if human:
            a = agreement(dict(sl.auto), {f: h for f, h in human.items() if f in sl.auto})
            a["induction_test"] = sl.auto_note
            rep.agreement[str(sl.layer)] = a
    return rep


def study_markdown(store: Any, layers: "list[StudyLayer] | tuple[StudyLayer, ...]") -> str:
    """The study's export: the report's markdown table, stacked bar figure and agreement."""
    from sae.analysis.labels import report_markdown

    head = ["# Feature labelling study", ""]
    if layers:
        sl = layers[0]
        head += [f"{sl.model}: {sl.n} random live features per layer (seed {sl.seed}); layers "
                 + ", ".join(f"{x.layer} ({len(x.features)} of {x.n_live} live)" for x in layers) + ".", ""]
    return "\n".join(head) + report_markdown(study_report_for(store, layers).to_dict()) + "\n"
