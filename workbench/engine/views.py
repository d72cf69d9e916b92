"""What the engine hands the screens: frozen dataclasses, and the adapters that make them from `sae/` results.

The adapters only rename and select; every number comes from the `sae/` function they call. Screens read these
views' attributes and never import `sae/` themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sae.experiments.ioi_results import CleanResult, IOIResult
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
    saes_path: str = ""  # where the SAE set was read from ("" when it lives in memory only)
    saes_digest: str = ""  # sha256 of the SAE weights (12 hex digits): which SAEs a finding was made with

    @property
    def saes_record(self) -> str:
        """The SAE set as a finding records it: its name, where it was read from, and the digest of its weights."""
        parts = [self.saes]
        if self.saes_path and self.saes_path != self.saes:
            parts.append(self.saes_path)
        if self.saes_digest:
            parts.append(f"sha256 {self.saes_digest}")
        return " · ".join(parts)

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

    What the feature is called, three words each with its source (`words` says them together): `role` its
    automatic role (sae.analysis.roles, the one classifier; the same object answers the heads and study screens),
    `paper_family` the paper's family mapped from that role (sae.analysis.families.FAMILY_OF_ROLE), `human_label`
    a person's label from the label file (labels.json; "" when none). Role and family are "" when the dashboards are
    not built or the feature is dead."""

    layer: int
    feature: int
    built: bool
    head_shares: list[float]
    note: str = ""
    role: str = ""
    paper_family: str = ""
    human_label: str = ""
    density: float | None = None
    max_act: float | None = None
    examples: tuple[ExampleView, ...] = ()
    quantiles: tuple[QuantileView, ...] = ()
    histogram: HistogramView | None = None
    top_logits: tuple[tuple[str, float], ...] = ()
    bottom_logits: tuple[tuple[str, float], ...] = ()
    top_dfa_src: SourceView | None = None

    @property
    def words(self) -> str:
        """The feature's names with where each came from; "" when it has none."""
        return feature_words(self.human_label, self.role, self.paper_family)


HUMAN_SOURCE = "human label, labels.json"
ROLE_SOURCE = "automatic role"
FAMILY_SOURCE = "paper family, from the role"


def feature_words(human: str, role: str, paper_family: str) -> str:
    """`successor (human label, labels.json) · previous-token (automatic role) · short-range context (paper
    family, from the role)`, leaving out what is empty."""
    parts = [f"{w} ({src})" for w, src in ((human, HUMAN_SOURCE), (role, ROLE_SOURCE), (paper_family, FAMILY_SOURCE))
             if w]
    return " · ".join(parts)


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
    act: float | None = None  # the feature's activation at `pos` (the root's value is its pre-activation)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True)
class StudyView:
    """The labelling study's sample: one `sae.analysis.study.StudyLayer` (frozen) per layer with built dashboards,
    and a note for each layer left out (its dashboards not built, ...)."""

    layers: tuple[Any, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadFeatureView:
    id: int
    share: float  # of the head's decoder norm
    role: str  # the human label where one exists, else the automatic role
    source: str = "automatic"  # "human" (labels.json) or "automatic" (automatic role)


@dataclass(frozen=True)
class HeadView:
    layer: int
    head: int
    verdict: str  # monosemantic | polysemantic
    main_role: str
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
    """An IOI experiment as a table: `records` (one row per record of the result's main table, column -> value),
    `sort_key` the first numeric column; `settings` what made it (model, N, seed, split, BOS, setting, names,
    corruption text: `IOISettings`' fields), recorded in findings; `data` the whole result as JSON (`to_dict()`)."""

    experiment: str
    n_prompts: int
    layer: int | None
    summary: str
    clean_logit_diff: float | None
    records: tuple[Mapping[str, Any], ...]
    sort_key: str | None
    settings: Mapping[str, Any]
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InductionHeadView:
    layer: int
    head: int
    scores: Mapping[str, float]  # prefix length -> mean induction score
    kind: str  # long-prefix | short-prefix | not induction


@dataclass(frozen=True)
class InductionView:
    """sae.experiments.induction.SyntheticInduction for the induction screen: scores per head and prefix length,
    the heads classed as induction heads (highest long-prefix score first), the rule, and which sampling ran;
    `data` the whole result as JSON (for findings)."""

    prefix_lengths: tuple[int, ...]
    heads: tuple[InductionHeadView, ...]
    found: tuple[InductionHeadView, ...]
    rule: str
    sampling: str
    design: str
    data: Mapping[str, Any] = field(default_factory=dict)
    n_per_length: int = 0  # sequences per prefix length
    seq_len: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ProxyView:
    """A feature against a proxy (sae.analysis.proxy.ProxyStudy): `summary` one line; `bins` (range, proxy-true
    count, proxy-false count, expected value true, expected value false) per activation bin; examples of false
    positives (the feature fires, the proxy does not hold) and false negatives; `data` the study as JSON."""

    layer: int
    feature: int
    proxy: str
    rule: str
    summary: str
    specificity: float | None
    sensitivity: float | None
    bins: tuple[tuple[str, int, int, float, float], ...]
    false_positives: tuple[ExampleView, ...]
    false_negatives: tuple[ExampleView, ...]
    data: Mapping[str, Any] = field(default_factory=dict)


# ---- adapters: `sae/` results -> views -----------------------------------------------------------------


def prompt_view(res: Any, layer: int, columns: int, dense: Any = None) -> PromptView:
    """sae.analysis.dfa.PromptFeatures -> the heatmap's data (the `columns` strongest features; `dense` ones, a
    `[d_sae]` bool mask, after the others, so the cursor starts on the strongest specific feature)."""
    cols = res.top_features(columns, last=dense)
    values = res.acts[:, cols].float().cpu().numpy() if cols else None
    return PromptView(layer=layer, tokens=list(res.tokens), columns=list(cols), values=values, truncated=bool(res.truncated))


def _example(e: Any) -> ExampleView:
    return ExampleView(tokens=list(e.tokens), active=int(e.center), act=float(e.act))


def dashboard_view(model: Any, sae: Any, layer: int, feature: int, roles: Callable[[], Any] | None = None,
                   labels: Any = None) -> DashboardView:
    """sae.analysis.dashboards.load_dashboard -> the feature screen's view; not built -> head shares and a note.

    roles: gives the layer's `sae.analysis.roles.LayerRoles` (the engine's, shared with the other screens);
    labels: the `sae.analysis.labels.LabelStore` to read a human label from."""
    from sae.analysis import dashboards as dash
    from sae.analysis import dfa
    from sae.analysis.families import paper_family

    shares = dfa.head_shares(sae, model.n_heads)[feature].tolist()
    try:
        d = dash.load_dashboard(layer, feature, model, sae)
    except dash.DashboardError as exc:
        return DashboardView(layer=layer, feature=feature, built=False, head_shares=shares,
                             note=one_line(exc) + " (or press b on the feature screen)")
    hist = d.histogram
    role = roles().role(feature) if roles is not None else ""
    top_src = None
    if d.dfa:
        first = d.dfa[0]
        top_src = SourceView(tokens=list(first.src_tokens), values=list(first.dfa_src), active=len(first.src_tokens) - 1)
    return DashboardView(
        layer=layer, feature=feature, built=True, head_shares=list(d.head_shares), note=d.logit_note,
        role=role, paper_family=paper_family(role), human_label=human_label(labels, model, sae, layer, feature),
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


def human_label(labels: Any, model: Any, sae: Any, layer: int, feature: int) -> str:
    """The feature's human label in `labels` (a `sae.analysis.labels.LabelStore`; None: none), "" when unlabelled."""
    if labels is None:
        return ""
    from sae.analysis import dashboards as dash
    from sae.analysis.labels import sae_id_of

    sae_id, _ = sae_id_of(dash.dashboard_dir(model, sae, layer))
    lab = labels.get(sae_id, layer, feature)
    return lab.family if lab else ""


def trace_view(tr: Any) -> TraceView:
    """sae.analysis.trace.Trace -> a frozen tree."""

    def node(n: Any) -> TraceNodeView:
        return TraceNodeView(kind=n.kind, label=n.label, value=float(n.value), children=tuple(node(c) for c in n.children))

    return TraceView(layer=tr.layer, feature=tr.feature, pos=tr.pos, tokens=list(tr.tokens), root=node(tr.root),
                     approximation=tr.approximation, truncated=bool(tr.truncated), data=tr.to_dict(),
                     act=float(tr.root.act) if tr.root.act is not None else None)


def survey_inputs(model: Any, saes: dict[int, Any], labels: Any = None) -> tuple[dict[int, Any], dict[int, dict[int, str]]]:
    """({layer: built dashboard dir}, {layer: {feature: human family}}) of the head survey; EngineError when no
    layer's dashboards are built."""
    from sae.analysis import dashboards as dash
    from sae.analysis import labels as lab

    dirs = {layer: dash.dashboard_dir(model, sae, layer) for layer, sae in saes.items()}
    built = {layer: d for layer, d in dirs.items() if dash.is_built(d)}
    if not built:
        first = min(saes)
        raise EngineError(f"the head survey reads built dashboards; run `{dash.build_command(first)}` (or b on screen 2)")
    human = lab.human_labels_by_layer(labels, built) if labels is not None else {}
    return built, human


def heads_view(model: Any, saes: dict[int, Any], labels: Any = None, on_progress: Any = None, cancel: Any = None,
               cached_only: bool = False) -> HeadsView | None:
    """sae.analysis.heads.survey_heads over the layers whose dashboards are built, each feature's role from the human
    labels in `labels` (a `sae.analysis.labels.LabelStore`) where they exist, else its automatic role
    (sae.analysis.roles, with the repeated-random-token test of induction candidates); through the analysis cache
    (`sae.analysis.cache.head_survey`). `cached_only`: None unless the cache holds it."""
    from sae.analysis import cache

    built, human = survey_inputs(model, saes, labels)
    if cached_only:
        survey = cache.cached_head_survey(model, saes, built, human)
        if survey is None:
            return None
    else:
        survey = cache.head_survey(model, saes, built, human, on_progress=on_progress, cancel=cancel)
    rows = tuple(
        HeadView(layer=h.layer, head=h.head, verdict=h.verdict, main_role=h.main_role, source=h.source,
                 features=tuple(HeadFeatureView(id=f.id, share=f.decoder_share, role=f.role, source=f.source)
                                for f in h.top_by_decoder))
        for lh in survey.layers for h in lh.heads
    )
    missing = sorted(set(saes) - set(built))
    summary = f"{survey.polysemantic_fraction:.0%} of heads polysemantic · " + "; ".join(
        f"L{lh.layer} from {lh.source}" for lh in survey.layers)
    if missing:
        summary += f" · dashboards not built for layers {missing}"
    return HeadsView(heads=rows, summary=summary, rule=survey.criterion)


def flat_record(r: Any) -> dict[str, Any]:
    """One table row from a record dataclass: scalars kept, nested records spread as `key.sub`, lists as text."""
    out: dict[str, Any] = {}
    for k, v in asdict(r).items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float, str)):
                    out[f"{k}.{k2}"] = v2
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))[:24]
        else:
            out[k] = v
    return out


def experiment_view(result: IOIResult) -> ExperimentView:
    """sae.experiments.ioi's result (an `IOIResult`) -> a table of its main records, and its settings."""
    records = tuple(flat_record(r) for r in result.rows())
    st = result.settings
    clean = result.clean_logit_diff
    summary = (f"{result.experiment} · {st.n_prompts} prompts · clean logit diff "
               + (f"{clean:+.3f}" if clean is not None else "-"))
    if isinstance(result, CleanResult) and result.accuracy is not None:
        summary += f" · accuracy {result.accuracy:.0%}"
    if result.sae_layer is not None:
        summary += f" · layer {result.sae_layer}"
    summary += f" · {st.describe()}"
    numeric = [k for k, v in (records[0].items() if records else []) if isinstance(v, float)]
    return ExperimentView(
        experiment=result.experiment, n_prompts=st.n_prompts, layer=result.sae_layer, summary=summary,
        clean_logit_diff=clean, records=records, sort_key=numeric[0] if numeric else None,
        settings=asdict(st), data=result.to_dict(),
    )


def induction_view(res: Any) -> InductionView:
    """sae.experiments.induction.SyntheticInduction -> the induction screen's view."""

    def head(h: Any) -> InductionHeadView:
        return InductionHeadView(layer=h.layer, head=h.head, scores=dict(h.scores), kind=h.kind)

    return InductionView(
        prefix_lengths=tuple(res.prefix_lengths), heads=tuple(head(h) for h in res.heads),
        found=tuple(head(h) for h in res.induction_heads()), rule=res.rule, sampling=res.sampling, design=res.design,
        data=res.to_dict(), n_per_length=res.n_per_length, seq_len=res.seq_len, seed=res.seed,
    )


def proxy_view(study: Any) -> ProxyView:
    """sae.analysis.proxy.ProxyStudy -> the feature screen's proxy panel."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    e = study.edges
    bins = tuple((f"{e[i]:.3g}-{e[i + 1]:.3g}", int(study.counts_true[i]), int(study.counts_false[i]),
                  float(study.expected_true[i]), float(study.expected_false[i])) for i in range(len(e) - 1))
    summary = (f"proxy {study.proxy}: specificity {pct(study.specificity)} ({study.true_positives} of "
               f"{study.n_fires} firings), sensitivity {pct(study.sensitivity)} ({study.true_positives} of "
               f"{study.n_proxy} proxy tokens) on {study.n_tokens:,} tokens of {study.source}")
    return ProxyView(
        layer=study.layer, feature=study.feature, proxy=study.proxy, rule=study.rule, summary=summary,
        specificity=study.specificity, sensitivity=study.sensitivity, bins=bins,
        false_positives=tuple(ExampleView(tokens=list(x.tokens), active=x.active, act=x.act)
                              for x in study.false_positive_examples),
        false_negatives=tuple(ExampleView(tokens=list(x.tokens), active=x.active, act=x.act)
                              for x in study.false_negative_examples),
        data=study.to_dict(),
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

