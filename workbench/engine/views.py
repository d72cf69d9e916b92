"""What the engine hands the screens: frozen dataclasses, and the adapters that make them from `sae/` results.

The adapters only rename and select; every number comes from the `sae/` function they call. Screens read these
views' attributes and never import `sae/` themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from workbench.engine.worker import EngineError, one_line


@dataclass(frozen=True)
class EngineInfo:
    """What the UI needs to know about the open model and SAEs (plain data, safe to read on the UI thread)."""

    model: str
    n_layers: int
    n_heads: int
    d_head: int
    n_ctx: int
    saes: str
    d_sae: Mapping[int, int]  # layer -> width, for every layer with an SAE

    @property
    def sae_layers(self) -> list[int]:
        return sorted(self.d_sae)


@dataclass(frozen=True)
class PromptView:
    """A prompt's features at one layer as heatmap data: `values [pos, column]` are the activations of the features
    `columns` (the prompt's strongest, by peak) at each token; None when no feature fires."""

    layer: int
    tokens: list[str]
    columns: list[int]
    values: np.ndarray | None
    truncated: bool


@dataclass(frozen=True)
class CellDetail:
    """DFA of one feature at one token. `dfa_heads [n_heads]`, `dfa_src [pos + 1]` (summed over heads),
    `head_src [n_heads][pos + 1]`; `sum(dfa_heads) + dfa_bias == pre_act`."""

    pos: int
    feature: int
    act: float
    pre_act: float
    dfa_heads: list[float]
    dfa_bias: float
    dfa_src: list[float]
    head_src: list[list[float]]


@dataclass(frozen=True)
class ExampleView:
    """One context: `tokens` around the example, `active` the index of the token the feature fired on."""

    tokens: list[str]
    active: int
    act: float


@dataclass(frozen=True)
class QuantileView:
    range: str  # "lo-hi (share of firings)"
    examples: tuple[ExampleView, ...]


@dataclass(frozen=True)
class HistogramView:
    counts: list[int]
    edges: list[float] | None  # activation values of the bin edges (log-spaced)


@dataclass(frozen=True)
class SourceView:
    """DFA by source token of one example: `values[s]` for `tokens[s]`, the destination at `active`."""

    tokens: list[str]
    values: list[float]
    active: int


@dataclass(frozen=True)
class DashboardView:
    """One feature's dashboard. Without a build (`built` False) only `head_shares` and `note` are filled.

    `label` is the feature's family (sae.analysis.families: induction, short-range context, ...), decided from
    the built dashboards; empty when they are not built."""

    layer: int
    feature: int
    built: bool
    head_shares: list[float]
    note: str = ""
    label: str = ""
    density: float | None = None
    max_act: float | None = None
    examples: tuple[ExampleView, ...] = ()
    quantiles: tuple[QuantileView, ...] = ()
    histogram: HistogramView | None = None
    top_logits: tuple[tuple[str, float], ...] = ()
    bottom_logits: tuple[tuple[str, float], ...] = ()
    top_dfa_src: SourceView | None = None


@dataclass(frozen=True)
class TraceNodeView:
    kind: str  # feature | head | head_source | enc_bias | ... (sae.analysis.trace.TraceNode.kind)
    label: str
    value: float
    children: tuple["TraceNodeView", ...] = ()


@dataclass(frozen=True)
class TraceView:
    """The recursive DFA tree of one feature at one position; children's values sum to their parent's."""

    layer: int
    feature: int
    pos: int
    tokens: list[str]
    root: TraceNodeView
    approximation: str
    truncated: bool
    data: Mapping[str, Any] = field(default_factory=dict)  # `Trace.to_dict()`, for findings

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True)
class HeadFeatureView:
    id: int
    share: float  # of the head's decoder norm
    family: str  # its role: the human label where one exists, else the automatic role
    source: str = "automatic"  # "human" or "automatic"


@dataclass(frozen=True)
class HeadView:
    layer: int
    head: int
    verdict: str  # monosemantic | polysemantic
    main_family: str
    features: tuple[HeadFeatureView, ...]
    source: str = "automatic"  # where its top features' roles came from: human, automatic or mixed (k of n human)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeadsView:
    heads: tuple[HeadView, ...]
    summary: str
    rule: str


@dataclass(frozen=True)
class ExperimentView:
    """An IOI experiment as a table: `records` (one flat dict per row; their keys are the columns), `sort_key` the
    first numeric column; `fields` the result's scalars and settings, `raw` the whole `sae/` result."""

    experiment: str
    n_prompts: int
    layer: int | None
    summary: str
    records: tuple[Mapping[str, Any], ...]
    sort_key: str | None
    fields: Mapping[str, Any]
    raw: Mapping[str, Any]


# ---- adapters: `sae/` results -> views -----------------------------------------------------------------


def prompt_view(res: Any, layer: int, columns: int, dense: Any = None) -> PromptView:
    """sae.analysis.dfa.PromptFeatures -> the heatmap's data (the `columns` strongest features; `dense` ones, a
    `[d_sae]` bool mask, after the others, so the cursor starts on the strongest specific feature)."""
    cols = res.top_features(columns, last=dense)
    values = res.acts[:, cols].float().cpu().numpy() if cols else None
    return PromptView(layer=layer, tokens=list(res.tokens), columns=list(cols), values=values, truncated=bool(res.truncated))


def _example(e: Any) -> ExampleView:
    return ExampleView(tokens=list(e.tokens), active=int(e.center), act=float(e.act))


def dashboard_view(model: Any, sae: Any, layer: int, feature: int, families: dict[Any, dict[int, str]] | None = None) -> DashboardView:
    """sae.analysis.dashboards.load_dashboard -> the feature screen's view; not built -> head shares and a note.

    `families` caches each built layer's feature -> family map (sae.analysis.families.classify_layer)."""
    from sae.analysis import dashboards as dash
    from sae.analysis import dfa

    shares = dfa.head_shares(sae, model.n_heads)[feature].tolist()
    try:
        d = dash.load_dashboard(layer, feature, model, sae)
    except dash.DashboardError as exc:
        return DashboardView(layer=layer, feature=feature, built=False, head_shares=shares,
                             note=one_line(exc) + " (or press b on the feature screen)")
    hist = d.histogram
    top_src = None
    if d.dfa:
        first = d.dfa[0]
        top_src = SourceView(tokens=list(first.src_tokens), values=list(first.dfa_src), active=len(first.src_tokens) - 1)
    return DashboardView(
        layer=layer, feature=feature, built=True, head_shares=list(d.head_shares), note=d.logit_note,
        label=family_label(model, sae, layer, feature, families),
        density=d.density, max_act=d.max_act,
        examples=tuple(_example(e) for e in d.top[:10]),
        quantiles=tuple(QuantileView(range=f"{q.lo:.3g}-{q.hi:.3g} ({q.share:.0%})",
                                     examples=tuple(_example(e) for e in q.examples)) for q in reversed(d.quantiles)),
        histogram=HistogramView(counts=list(hist["counts"]),
                                edges=[10 ** e for e in hist["log10_edges"]] if hist["log10_edges"] else None),
        top_logits=tuple((str(t), float(v)) for t, v in d.logits_top),
        bottom_logits=tuple((str(t), float(v)) for t, v in d.logits_bottom),
        top_dfa_src=top_src,
    )


def family_label(model: Any, sae: Any, layer: int, feature: int, cache: dict[Any, dict[int, str]] | None) -> str:
    """The feature's family from the layer's built dashboards (sae.analysis.families); "" for a dead feature."""
    from sae.analysis import dashboards as dash
    from sae.analysis import families

    directory = dash.dashboard_dir(model, sae, layer)
    cache = {} if cache is None else cache
    if directory not in cache:
        cache[directory] = families.classify_layer(directory, n_examples=0).family_of()
    return cache[directory].get(feature, "")


def trace_view(tr: Any) -> TraceView:
    """sae.analysis.trace.Trace -> a frozen tree."""

    def node(n: Any) -> TraceNodeView:
        return TraceNodeView(kind=n.kind, label=n.label, value=float(n.value), children=tuple(node(c) for c in n.children))

    return TraceView(layer=tr.layer, feature=tr.feature, pos=tr.pos, tokens=list(tr.tokens), root=node(tr.root),
                     approximation=tr.approximation, truncated=bool(tr.truncated), data=tr.to_dict())


def heads_view(model: Any, saes: dict[int, Any], labels: Any = None) -> HeadsView:
    """sae.analysis.heads.survey_heads over the layers whose dashboards are built, each feature's role from the human
    labels in `labels` (a `sae.analysis.labels.LabelStore`) where they exist, else its automatic role
    (sae.analysis.roles, with the repeated-random-token test of induction candidates)."""
    from sae.analysis import dashboards as dash
    from sae.analysis import heads
    from sae.analysis import labels as lab
    from sae.analysis import roles

    dirs = {layer: dash.dashboard_dir(model, sae, layer) for layer, sae in saes.items()}
    built = {layer: d for layer, d in dirs.items() if dash.is_built(d)}
    if not built:
        first = min(saes)
        raise EngineError(f"the head survey reads built dashboards; run `{dash.build_command(first)}` (or b on screen 2)")
    human = lab.human_labels_by_layer(labels, built) if labels is not None else {}
    confirm = {layer: roles.model_confirmer(model, saes[layer], layer) for layer in built if layer >= 1}
    survey = heads.survey_heads(built, model=model.name, labels=human, confirm=confirm)
    rows = tuple(
        HeadView(layer=h.layer, head=h.head, verdict=h.verdict, main_family=h.main_family, source=h.source,
                 features=tuple(HeadFeatureView(id=f.id, share=f.decoder_share, family=f.family, source=f.source)
                                for f in h.top_by_decoder))
        for lh in survey.layers for h in lh.heads
    )
    missing = sorted(set(saes) - set(built))
    summary = f"{survey.polysemantic_fraction:.0%} of heads polysemantic · " + "; ".join(
        f"L{lh.layer} from {lh.source}" for lh in survey.layers)
    if missing:
        summary += f" · dashboards not built for layers {missing}"
    return HeadsView(heads=rows, summary=summary, rule=survey.criterion)


def flat_record(r: dict[str, Any]) -> dict[str, Any]:
    """One table row: scalars kept, nested dicts spread as `key.sub`, lists shortened to text."""
    out: dict[str, Any] = {}
    for k, v in r.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float, str)):
                    out[f"{k}.{k2}"] = v2
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))[:24]
        else:
            out[k] = v
    return out


def experiment_view(out: dict[str, Any], experiment: str, n: int) -> ExperimentView:
    """sae.experiments.ioi.run_experiment's result -> a table: its first list of records, flattened."""
    lists = [k for k, v in out.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    records = tuple(flat_record(r) for r in out[lists[0]]) if lists else ()
    scalars = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary = (f"{out.get('experiment', experiment)} · {out.get('n_prompts', n)} prompts · clean logit diff "
               f"{out.get('clean_logit_diff', float('nan')):+.3f}")
    for k in ("accuracy", "layer"):
        if k in scalars:
            summary += f" · {k} {scalars[k]:.3g}" if isinstance(scalars[k], float) else f" · {k} {scalars[k]}"
    numeric = [k for k, v in (records[0].items() if records else []) if isinstance(v, float)]
    fields = {k: v for k, v in out.items() if not isinstance(v, list)}
    layer = out.get("layer")
    return ExperimentView(
        experiment=str(out.get("experiment", experiment)), n_prompts=int(out.get("n_prompts", n)),
        layer=layer if isinstance(layer, int) else None, summary=summary, records=records,
        sort_key=numeric[0] if numeric else None, fields=fields, raw=out,
    )


@dataclass(frozen=True)
class FormField:
    """One `TrainConfig` field as a form shows it: name, label, one-line help, default as text, kind, choices."""

    name: str
    label: str
    help: str
    default: str
    kind: str
    choices: tuple[str, ...] = ()


def train_form_fields(names: list[str]) -> dict[str, FormField]:
    """The training form's fields, read from `TrainConfig` (the one home of training defaults and help)."""
    from dataclasses import fields as dc_fields

    from sae.engine.training.config import TrainConfig, field_default

    out: dict[str, FormField] = {}
    for f in dc_fields(TrainConfig):
        if f.name in names:
            d = field_default(f.name)
            text = "" if d is None or d == [] else f"{d:g}" if isinstance(d, float) else str(d)
            out[f.name] = FormField(f.name, f.name.replace("_", " "), f.metadata.get("help", ""), text,
                                    f.metadata.get("kind", ""), tuple(f.metadata.get("choices", ())))
    return out

