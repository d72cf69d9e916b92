"""The engine the app holds: the model and SAEs, owned by the worker thread; every method a thin wrapper over `sae/`.

Quick requests return a frozen view (`workbench.engine.views`); long jobs return a `JobHandle` and post their
result as a message. Errors meant for the user are `AttnscopeError`s (from `sae/` or `EngineError` here), passed
through unchanged: the screens show them inline. "default" (model, SAEs, corpus) is resolved here, via `sae.zoo`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from sae.engine.errors import AttnscopeError
from sae.engine.jobs import Progress
from workbench.engine.views import (
    CellDetail,
    DashboardView,
    EngineInfo,
    HeadsView,
    PromptView,
    TraceView,
    dashboard_view,
    experiment_view,
    heads_view,
    prompt_view,
    trace_view,
)
from workbench.engine.worker import EngineError, JobHandle, Post, Reporter, Worker, one_line

T = TypeVar("T")


def sae_dir_candidates(roots: list[Path]) -> list[Path]:
    """SAE sets a user may want: folders holding SAELens dirs (cfg.json + sae_weights.safetensors)."""
    found: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for cfg in list(root.glob("*/cfg.json")) + list(root.glob("*/*/cfg.json")):
            if (cfg.parent / "sae_weights.safetensors").is_file():
                found.add(cfg.parent.parent)
    return sorted(found)


class Engine:
    """The model and SAEs, owned by one worker thread; every method is a thin wrapper over `sae/`.

    Build it with specs (`Engine("default", "default")`, loaded on the worker by `await open()`), or with objects
    already in memory (`Engine.from_objects(model, {layer: sae})`, what the tests do).
    """

    def __init__(self, model: str = "default", saes: str = "default", device: str = "auto", dtype: str = "float32") -> None:
        self.model_spec = model
        self.saes_spec = saes
        self.device = device
        self.dtype = dtype
        self.worker = Worker()
        self.info: EngineInfo | None = None
        self.labels_path: Any = None  # the study's label file; None: $ATTNSCOPE_LABELS or the data dir
        # touched on the worker thread only
        self._model: Any = None
        self._saes: dict[int, Any] = {}
        self._last: dict[int, Any] = {}  # layer -> the last PromptFeatures, for drilling into cells
        self._families: dict[Any, dict[int, str]] = {}  # dashboard dir -> {feature: family}

    @classmethod
    def from_objects(cls, model: Any, saes: dict[int, Any], saes_label: str = "in memory") -> "Engine":
        eng = cls(model=getattr(model, "name", "model"), saes=saes_label)
        eng._model = model
        eng._saes = dict(saes)
        eng.info = eng._describe()
        return eng

    def close(self) -> None:
        self.worker.close()

    # ---- plumbing -------------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, channel: str | None = None, **kwargs: Any) -> T:
        return await self.worker.call(fn, *args, channel=channel, **kwargs)

    def start_job(self, kind: str, fn: Callable[[Reporter], Any], post: Post, label: str = "", key: str = "",
                  background: bool = False) -> JobHandle:
        return self.worker.start_job(kind, fn, post, label=label, key=key, background=background)

    def _describe(self) -> EngineInfo:
        m = self._model
        return EngineInfo(
            model=str(m.name), n_layers=m.n_layers, n_heads=m.n_heads, d_head=m.d_head, n_ctx=m.n_ctx,
            saes=self.saes_spec, d_sae={layer: int(s.cfg.d_sae) for layer, s in self._saes.items()},
        )

    def _need_model(self) -> Any:
        if self._model is None:
            self._open_sync()
        return self._model

    def _sae(self, layer: int) -> Any:
        self._need_model()
        if layer not in self._saes:
            have = ", ".join(map(str, sorted(self._saes))) or "none"
            raise EngineError(f"no SAE for layer {layer} (SAEs loaded for layers: {have})")
        return self._saes[layer]

    # ---- opening models and SAEs ----------------------------------------------------------------------

    def _open_sync(self) -> EngineInfo:
        from sae.zoo import load_model  # "default" is resolved here, above the engine

        model = load_model(self.model_spec, device=self.device, dtype=self.dtype)
        saes = self._load_saes(self.saes_spec, model)
        self._model, self._saes, self._last = model, saes, {}
        self.info = self._describe()
        return self.info

    def _load_saes(self, spec: str, model: Any) -> dict[int, Any]:
        from sae.zoo import load_sae_set

        try:
            loaded = load_sae_set(spec, model, device=model.device)
        except (AttnscopeError, ValueError, OSError, KeyError) as exc:
            raise EngineError(f"could not open SAEs {spec!r}: {one_line(exc)}") from exc
        if not loaded:
            raise EngineError(f"no SAEs found in {spec!r}")
        return dict(loaded)

    async def open(self) -> EngineInfo:
        """Load the model and SAEs named at construction (no-op when already open)."""
        return await self.call(lambda: self.info if self._model is not None else self._open_sync())

    async def open_saes(self, spec: str) -> EngineInfo:
        """Swap in another SAE set for the open model; the old set stays when the new one does not fit."""

        def swap() -> EngineInfo:
            model = self._need_model()
            saes = self._load_saes(spec, model)
            self._saes, self.saes_spec, self._last = saes, spec, {}
            self.info = self._describe()
            return self.info

        return await self.call(swap, channel="saes")

    def add_saes_sync(self, saes: dict[int, Any], label: str) -> EngineInfo:
        """Worker-side: replace the SAE set by objects in memory (fresh from training)."""
        self._saes, self.saes_spec, self._last = dict(saes), label, {}
        self.info = self._describe()
        return self.info

    async def use_saes(self, saes: dict[int, Any], label: str) -> EngineInfo:
        """Explore with SAEs held in memory (a finished training run)."""
        return await self.call(self.add_saes_sync, saes, label, channel="saes")

    def sae_sets(self) -> list[Path]:
        """SAE sets the user may want to open: the embedded default's and any under the working dir or ./runs."""
        from sae import zoo

        return sae_dir_candidates([zoo.DEFAULT_SAES_DIR.parent, Path.cwd(), Path.cwd() / "runs"])

    # ---- explore --------------------------------------------------------------------------------------

    async def features(self, prompt: str, layer: int, top_k: int = 8, columns: int = 24) -> PromptView:
        """Prompt features at `layer` (sae.analysis.dfa.prompt_features) as heatmap data; newer calls make older
        ones stale."""

        def run() -> PromptView:
            from sae.analysis import dfa

            sae = self._sae(layer)
            res = dfa.prompt_features(self._model, sae, prompt, top_k=top_k, layer=layer)
            self._last[layer] = res
            # SAEs with saved densities (the shipped ones, any trained run): unspecific features after the others
            return prompt_view(res, layer, columns, dense=dfa.dense_mask(sae))

        return await self.call(run, channel="features")

    async def cell(self, layer: int, pos: int, feature: int) -> CellDetail:
        """DFA by head and by source of one (token, feature) of the last prompt run at `layer`."""

        def run() -> CellDetail:
            import torch

            from sae.analysis import dfa

            res = self._last.get(layer)
            if res is None or res.acts is None:
                raise EngineError("run a prompt first")
            sae = self._sae(layer)
            if not 0 <= pos < len(res.tokens):
                raise EngineError(f"position {pos} is outside the prompt")
            with torch.no_grad():
                hs = dfa.head_source_matrix(res, sae, pos, feature)  # [H, pos + 1]
                bias = float(sae.encoder_bias_total[feature])
            return CellDetail(
                pos=pos, feature=feature, act=float(res.acts[pos, feature]), pre_act=float(res.pre[pos, feature]),
                dfa_heads=hs.sum(1).tolist(), dfa_bias=bias,
                dfa_src=hs.sum(0).tolist(), head_src=hs.tolist(),
            )

        return await self.call(run, channel="cell")

    async def trace(self, prompt: str, layer: int, feature: int, pos: int | None = None, depth: int = 1, keep: int = 5) -> TraceView:
        """The recursive DFA tree of one feature (sae.analysis.trace.trace_feature)."""

        def run() -> TraceView:
            from sae.analysis.trace import trace_feature

            self._sae(layer)
            return trace_view(trace_feature(self._model, self._saes, prompt, layer, feature, pos=pos, depth=depth, keep=keep))

        return await self.call(run, channel="trace")

    # ---- feature pages and the head survey ------------------------------------------------------------

    def _dashboard(self, layer: int, feature: int) -> DashboardView:
        sae = self._sae(layer)
        if not 0 <= feature < sae.cfg.d_sae:
            raise EngineError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
        return dashboard_view(self._model, sae, layer, feature, self._families)

    async def dashboard(self, layer: int, feature: int) -> DashboardView:
        """The full dashboard of one feature (see `screens.feature.dashboard_renderable`)."""
        return await self.call(self._dashboard, layer, feature, channel="dashboard")

    async def summary(self, layer: int, feature: int) -> DashboardView:
        """The explore side panel's short version of `dashboard`; EngineError when the dashboards are not built."""

        def run() -> DashboardView:
            v = self._dashboard(layer, feature)
            if not v.built:
                raise EngineError(v.note or "no dashboard")
            return v

        return await self.call(run, channel="summary")

    async def heads(self) -> HeadsView:
        """The head survey over every layer with an SAE whose dashboards are built (sae.analysis.heads)."""

        def run() -> HeadsView:
            self._need_model()
            return heads_view(self._model, self._saes, self.label_store())

        return await self.call(run, channel="heads")

    # ---- the labelling study (sae.analysis.study, sae.analysis.labels) -------------------------------------

    async def study_layer(self, layer: int, n: int, seed: int) -> Any:
        """`sae.analysis.study.StudyLayer` (frozen): `n` random live features of `layer` (seeded) and their
        automatic roles."""

        def run() -> Any:
            from sae.analysis.study import study_layer

            return study_layer(self._need_model(), self._sae(layer), layer, n, seed)

        return await self.call(run, channel=f"study-{layer}")

    def label_store(self) -> Any:
        """The label file (`sae.analysis.labels.LabelStore`: $ATTNSCOPE_LABELS or the data dir); plain file work,
        safe from the UI thread and between processes."""
        from sae.analysis.labels import LabelStore

        return LabelStore(self.labels_path)

    def study_markdown(self, layers: Any) -> str:
        """The study's markdown export (`sae.analysis.study.study_markdown`) of `StudyLayer`s."""
        from sae.analysis.study import study_markdown

        return study_markdown(self.label_store(), layers)

    # ---- long jobs ------------------------------------------------------------------------------------

    def run_induction(self, n: int, post: Post, seed: int = 0) -> JobHandle:
        """Synthetic repeated-prefix induction scores per head (sae.experiments.induction.synthetic_induction);
        the result is its `SyntheticInduction`."""

        def job(rep: Reporter) -> Any:
            from sae.experiments import induction

            model = self._need_model()
            return induction.synthetic_induction(model, n=n, seq_len=min(128, model.n_ctx), seed=seed,
                                                 on_progress=rep.progress, cancel=rep.cancel)

        return self.start_job("induction", job, post, label="induction experiment", key="induction")

    def run_ioi(self, experiment: str, n: int, layer: int | None, post: Post, seed: int = 0) -> JobHandle:
        """One IOI experiment (sae.experiments.ioi) on a fresh held-out dataset; the result is an `ExperimentView`."""

        def job(rep: Reporter) -> Any:
            from sae.experiments import ioi

            model = self._need_model()
            data = ioi.build_dataset(model, n, seed=seed)
            out = ioi.run_experiment(experiment, model, data, self._saes, layer=layer, on_progress=rep.progress,
                                     cancel=rep.cancel)
            return experiment_view(out, experiment, n)

        return self.start_job("ioi", job, post, label=f"IOI {experiment}", key="ioi")

    def train(self, form: dict[str, Any], corpus: str, out_dir: str, resume: bool, post: Post) -> JobHandle:
        """Train SAEs on the open model (sae.engine.training.loop.train_saes); the result is `{layer: SAE}`."""

        def job(rep: Reporter) -> Any:
            from sae.engine.training import loop as training
            from sae.zoo.token_cache import cached_token_rows

            model = self._need_model()
            # everything not in the form (warm-up, dead window, resampling) is TrainConfig's default, scaled to the run
            cfg = training.TrainConfig(model_name=model.name, corpus=corpus,
                                       **{"context_size": min(128, model.n_ctx), **form})
            rows_needed = cfg.total_tokens // max(1, cfg.context_size - 1) + cfg.rows_per_pass
            try:
                rows = cached_token_rows(model, corpus, cfg.context_size, split="train", max_rows=rows_needed)
            except OSError as exc:
                raise EngineError(one_line(exc)) from exc
            if rows.shape[0] == 0:
                raise EngineError(f"corpus {corpus!r} is too small for one {cfg.context_size}-token row")
            rep.progress(Progress("train", 0, cfg.total_tokens, unit="tokens", stage=f"step 0/{cfg.total_steps}",
                                  note="tokens ready"))
            return training.train_saes(model, rows, cfg, out_dir, on_progress=rep.progress,
                                       cancel=rep.cancel, resume=resume, device=model.device)

        return self.start_job("train", job, post, label="training", key="train")

    def build_dashboards(self, layer: int | list[int], post: Post, background: bool = False) -> JobHandle:
        """Scan held-out text once and store every feature's dashboard (sae.analysis.dashboards.build_layers),
        for one layer or several from one scan. Cancelling keeps the scan; building again resumes it. The result
        is `{layer: BuildResult}`."""
        layers = [layer] if isinstance(layer, int) else sorted(layer)
        name = f"layer {layers[0]}" if len(layers) == 1 else "layers " + ",".join(map(str, layers))

        def job(rep: Reporter) -> Any:
            from sae.analysis import dashboards as dash
            from sae.zoo import corpus_texts

            def progress(p: Progress) -> None:  # name the layers in the stage: "layers 0,1,2: scanning"
                rep.progress(replace(p, stage=f"{name}: {p.stage}" if p.stage else name))

            def texts() -> list[str]:
                rep.progress(Progress("dashboards", 0, 0, unit="tokens", stage=f"{name}: reading held-out text"))
                docs = corpus_texts(spec.corpus, "heldout")
                rep.progress(Progress("dashboards", 0, 0, unit="tokens", stage=f"{name}: tokenizing"))
                return docs

            # each report also serves the quick requests waiting, so the heatmap answers between batches
            rep.progress(Progress("dashboards", 0, 0, unit="tokens", stage=f"{name}: starting"))
            self._need_model()
            spec = dash.DashboardSpec()
            saes = {x: self._sae(x) for x in layers}
            return dash.build_layers(self._model, saes, spec, docs=texts, on_progress=progress, cancel=rep.cancel)

        return self.start_job("dashboards", job, post, label=f"dashboards of {name}",
                              key=",".join(f"dashboards:{x}" for x in layers), background=background)

    def building_dashboards(self, layer: int) -> bool:
        """A dashboard build of `layer` runs or waits (so a screen says 'being built', not 'not built')."""
        return any(f"dashboards:{layer}" in h.key.split(",") for h in self.worker.jobs())

    def dashboards_missing(self) -> list[int]:
        """SAE layers whose dashboards are not built yet (worker-side; cheap: looks up the build registry)."""
        from sae.analysis.dashboards.store import dashboard_dir, is_built

        self._need_model()
        return [layer for layer, sae in sorted(self._saes.items()) if not is_built(dashboard_dir(self._model, sae, layer))]

    async def missing_dashboards(self) -> list[int]:
        return await self.call(self.dashboards_missing)
