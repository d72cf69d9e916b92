"""The engine the app holds: the model and SAEs, owned by the worker thread; every method a thin wrapper over `sae/`.

Quick requests return a frozen view (`workbench.engine.views`); long jobs return a `JobHandle` and post their
result as a message. Errors meant for the user are `AttnscopeError`s (from `sae/` or `EngineError` here), passed
through unchanged: the screens show them inline. "default" (model, SAEs, corpus) is resolved here, via `sae.zoo`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sae.engine.jobs import Progress
from workbench.engine.views import (
    CellDetail,
    DashboardView,
    EngineInfo,
    HeadsView,
    PromptView,
    StudyView,
    TraceView,
    dashboard_view,
    experiment_view,
    heads_view,
    induction_view,
    prompt_view,
    proxy_view,
    trace_view,
)
from workbench.engine.research import ResearchMethods, ResultStore, SearchMethods
from sae.engine.errors import AttnscopeError
from workbench.engine.worker import EngineError, JobHandle, Post, Reporter, Worker, one_line

if TYPE_CHECKING:
    from sae.engine.autoencoder import SAE
    from sae.engine.models import LoadedModel

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


def existing_run(out_dir: str | Path) -> str:
    """What a training run left in `out_dir` ("2 SAEs and a checkpoint"), or "" when it holds none: the training
    screen never starts a fresh run over it (the CLI refuses the same without --overwrite)."""
    from sae.engine.formats import CFG_FILE, WEIGHTS_FILE
    from sae.engine.training.loop import CHECKPOINT_FILE

    d = Path(out_dir).expanduser()
    if not d.is_dir():
        return ""
    n_saes = sum(1 for x in d.iterdir() if (x / CFG_FILE).is_file() and (x / WEIGHTS_FILE).is_file())
    parts = [f"{n_saes} SAE{'s' if n_saes != 1 else ''}"] if n_saes else []
    if (d / CHECKPOINT_FILE).exists():
        parts.append("a checkpoint")
    return " and ".join(parts)


# the explore heatmap: one model forward per prompt holds every SAE layer's tensors when they fit in this many bytes
# (GPT-2 Small at its whole 1024-token context: about 0.6 GB), else only the layer asked for
PROMPT_RUN_BYTES = 1 << 30
KEEP_LAST = 3  # layers whose last prompt features (dense activations, for drilling into cells) stay in memory

QUICK_RUNS = {"induction": 32, "ioi": 24}  # the workbench's quick sizes (sequences per prefix length, prompts)


def full_run_sizes() -> dict[str, int]:
    """The CLI's (and the paper's) sizes of the experiments the workbench runs quick: {"induction": 400, "ioi": 100}."""
    from sae.experiments.induction import N_SEQUENCES
    from sae.experiments.ioi_data import N_PROMPTS

    return {"induction": N_SEQUENCES, "ioi": N_PROMPTS}


def saes_digest(saes: dict[int, Any]) -> str:
    """sha256 over every SAE's parameters, layer by layer (12 hex digits): the same weights give the same digest
    whether read from disk or held in memory."""
    import hashlib

    h = hashlib.sha256()
    for layer in sorted(saes):
        h.update(f"layer {layer}".encode())
        for name, t in sorted(saes[layer].state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def saved_run_config(out_dir: str | Path) -> Any:
    """The `TrainConfig` saved beside a run (`train_config.json`); EngineError when it is missing or damaged."""
    import json

    from sae.engine.training.loop import CONFIG_FILE, TrainConfig

    path = Path(out_dir).expanduser() / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise EngineError(f"{out_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    except AttnscopeError:  # a config that does not validate says so itself
        raise
    except (OSError, ValueError, TypeError) as exc:  # unreadable, or not JSON
        raise EngineError(f"{path} is damaged ({one_line(exc)})") from exc


def saved_run_form(out_dir: str | Path) -> dict[str, Any]:
    """A run's saved settings as the training form's values (what `u` resumes with, shown before it starts)."""
    cfg = saved_run_config(out_dir)
    k = cfg.k[0] if isinstance(cfg.k, list) else cfg.k
    return {"layers": ",".join(map(str, cfg.layers or [])), "architecture": cfg.architecture,
            "d_sae": "" if cfg.d_sae is None else str(cfg.d_sae),
            "sparsity": str(k) if cfg.architecture == "topk" else str(cfg.l1_coeff),
            "total_tokens": str(cfg.total_tokens), "batch_size": str(cfg.batch_size), "corpus": cfg.corpus or "default"}


def missing_local_dir(spec: str) -> str:
    """A one-line error when `spec` is meant as a local path (it starts with / . ~, or its first part is a folder
    here) and does not exist, naming what its parent holds; "" otherwise (a release name or a hub repo)."""
    p = Path(spec).expanduser()
    if p.exists() or not spec.strip():
        return ""
    first = Path(spec).parts[0] if Path(spec).parts else ""
    if not (spec.startswith(("/", ".", "~")) or (len(Path(spec).parts) > 1 and Path(first).is_dir())):
        return ""
    parent = p.parent
    if not parent.is_dir():
        return f"no such SAE directory: {spec} (the folder {parent} does not exist)"
    near = sorted(x.name for x in parent.iterdir() if x.is_dir() and not x.name.startswith("."))[:6]
    return f"no such SAE directory: {spec}" + (f" ({parent} holds {', '.join(near)})" if near else "")


def free_run_dir(out_dir: str | Path) -> str:
    """`out_dir` itself when it holds no run, else the first of `out_dir-2`, `out_dir-3`, ... that holds none."""
    base = str(out_dir).rstrip("/") or str(out_dir)
    if not existing_run(base):
        return base
    i = 2
    while existing_run(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


class Engine(ResearchMethods, SearchMethods, ResultStore):
    """The model and SAEs, owned by one worker thread; every method is a thin wrapper over `sae/`.

    Build it with specs (`Engine("default", "default")`, loaded on the worker by `await open()`), or with objects
    already in memory (`Engine.from_objects(model, {layer: sae})`, what the tests do).
    """

    def __init__(self, model: str = "default", saes: str = "default", device: str = "auto", dtype: str = "float32",
                 resident_saes: int | None = None) -> None:
        self.model_spec = model
        self.saes_spec = saes
        self.device = device
        self.dtype = dtype
        # at most this many layers' SAEs on the model's device (a GPU): the rest wait in CPU memory and move over
        # when a screen asks for their layer; None keeps them all there
        self.resident_saes = resident_saes
        self.sae_moves: list[tuple[int, float]] = []  # (layer, seconds) of each move onto the device
        self._recent: list[int] = []  # layers used, most recent last
        self.worker = Worker()
        self.info: EngineInfo | None = None
        self.labels_path: Any = None  # the study's label file; None: $ATTNSCOPE_LABELS or the data dir
        # touched on the worker thread only
        self._model: LoadedModel | None = None
        self._saes: dict[int, SAE] = {}
        self._last: dict[int, Any] = {}  # layer -> the last PromptFeatures, for drilling into cells
        self._run: tuple[tuple[str, int], Any] | None = None  # (prompt, model id) -> its sae.analysis.dfa.PromptRun
        self._dense_masks: dict[tuple[int, int], Any] = {}  # (layer, id(SAE)) -> dense_mask
        self._roles: dict[Any, Any] = {}  # dashboard dir -> its sae.analysis.roles.LayerRoles
        self._traces: dict[tuple, TraceView] = {}  # recent traces: t, `,` and `.` revisit them

    @classmethod
    def from_objects(cls, model: LoadedModel, saes: dict[int, SAE], saes_label: str = "in memory") -> "Engine":
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
            saes_path=self._saes_path(), saes_digest=saes_digest(self._saes),
        )

    def _saes_path(self) -> str:
        """The directory the SAE set was read from ("" for SAEs held in memory, e.g. fresh from training)."""
        from sae.zoo import resolve_saes

        p = Path(resolve_saes(self.saes_spec)).expanduser()
        return str(p.resolve()) if p.exists() else ""

    def _need_model(self) -> LoadedModel:
        if self._model is None:
            self._open_sync()
        assert self._model is not None
        return self._model

    def _sae(self, layer: int) -> SAE:
        self._need_model()
        if layer not in self._saes:
            have = ", ".join(map(str, sorted(self._saes))) or "none"
            raise EngineError(f"no SAE for layer {layer} (SAEs loaded for layers: {have})")
        return self._resident([layer])[layer]

    def _resident(self, layers: Any = None) -> dict[int, Any]:
        """The SAEs of `layers` (default: all) on the model's device. With `resident_saes`, SAEs not used lately
        go back to CPU memory to make room (the layers asked for stay, even beyond the limit); each move onto the
        device is timed in `sae_moves`."""
        import time

        wanted = sorted(self._saes) if layers is None else [x for x in layers if x in self._saes]
        if self.resident_saes is None or self._model is None:
            return {x: self._saes[x] for x in wanted}
        dev = self._model.device
        self._recent = [x for x in self._recent if x not in wanted] + wanted
        keep = set(wanted) | set(self._recent[-max(self.resident_saes, 0):] if self.resident_saes > 0 else [])
        for x, sae in self._saes.items():
            if x not in keep and sae.W_enc.device.type != "cpu":
                self._saes[x] = sae.to("cpu")
        for x in wanted:
            sae = self._saes[x]
            if sae.W_enc.device != dev:
                t = time.perf_counter()
                self._saes[x] = sae.to(dev)
                if dev.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                self.sae_moves.append((x, time.perf_counter() - t))
        return {x: self._saes[x] for x in wanted}

    def sae_residency(self) -> str:
        """A line for the status bar: which layers' SAEs are on the device and what the last move cost."""
        if self.resident_saes is None or self._model is None:
            return ""
        on = [x for x, s in sorted(self._saes.items()) if s.W_enc.device == self._model.device]
        text = f"SAEs on {self._model.device}: layers {on}"
        if self.sae_moves:
            layer, sec = self.sae_moves[-1]
            text += f" (layer {layer} moved on in {sec:.2f} s)"
        return text

    # ---- opening models and SAEs ----------------------------------------------------------------------

    def _open_sync(self) -> EngineInfo:
        from sae.zoo import load_model  # "default" is resolved here, above the engine

        model = load_model(self.model_spec, device=self.device, dtype=self.dtype)
        saes = self._load_saes(self.saes_spec, model)
        self._recent = []
        self._model, self._saes, self._last = model, saes, {}
        self._run, self._dense_masks = None, {}
        self.info = self._describe()
        return self.info

    def _load_saes(self, spec: str, model: LoadedModel) -> dict[int, SAE]:
        from sae.zoo import load_sae_set

        missing = missing_local_dir(spec)
        if missing:
            raise EngineError(missing)
        # SAEs in the model's dtype; with a residency limit they wait in CPU memory until a layer is asked for.
        # Their AttnscopeErrors reach the screen as they are.
        device = "cpu" if self.resident_saes is not None else model.device
        loaded = load_sae_set(spec, model, device=device, dtype=model.dtype)
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
            self._run, self._dense_masks = None, {}
            self.info = self._describe()
            return self.info

        return await self.call(swap, channel="saes")

    def add_saes_sync(self, saes: dict[int, Any], label: str) -> EngineInfo:
        """Worker-side: replace the SAE set by objects in memory (fresh from training)."""
        self._saes, self.saes_spec, self._last = dict(saes), label, {}
        self._run, self._dense_masks = None, {}
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
        """Prompt features at `layer` (sae.analysis.dfa) as heatmap data; newer calls make older ones stale.

        A new prompt runs the model once up to the last layer with an SAE (`_prompt_run`); the other layers of the
        same prompt then cost their SAE encode only."""

        def run() -> PromptView:
            sae = self._sae(layer)
            res = self._prompt_run(prompt, layer).features(sae, layer, top_k=top_k)
            self._keep_last(layer, res)
            # SAEs with saved densities (the shipped ones, any trained run): unspecific features after the others
            return prompt_view(res, layer, columns, dense=self._dense(layer, sae))

        return await self.call(run, channel="features")

    def _prompt_run(self, prompt: str, layer: int) -> Any:
        """The last prompt's one model forward (sae.analysis.dfa.PromptRun), run again only for a new prompt or a
        layer it does not hold: it holds every layer with an SAE, or only `layer` when the tensors of all of them
        would exceed `PROMPT_RUN_BYTES` (a long prompt on a big model)."""
        from sae.analysis import dfa

        model = self._need_model()
        hit = self._run
        if hit is not None and hit[0] == (prompt, id(model)) and layer in hit[1].layers:
            return hit[1]
        layers = sorted(self._saes)
        n = dfa.prompt_tokens(model, prompt)[0].shape[1]
        if dfa.run_bytes(model, n, layers) > PROMPT_RUN_BYTES:
            layers = [layer]
        self._run = None  # the old run's tensors go before the new ones are made
        self._run = ((prompt, id(model)), dfa.run_prompt(model, prompt, layers))
        return self._run[1]

    def _keep_last(self, layer: int, res: Any) -> None:
        """Remember `res` for `cell`; only the `KEEP_LAST` most recent layers' results stay (each holds the prompt's
        dense activations), an older layer's cell is worked out again from the prompt's run."""
        self._last.pop(layer, None)
        self._last[layer] = res
        while len(self._last) > KEEP_LAST:
            self._last.pop(next(iter(self._last)))

    def _dense(self, layer: int, sae: SAE) -> Any:
        """`sae.analysis.dfa.dense_mask` of the layer's SAE, read once per SAE (it reads a file)."""
        from sae.analysis import dfa

        key = (layer, id(sae))
        if key not in self._dense_masks:
            self._dense_masks[key] = dfa.dense_mask(sae)
        return self._dense_masks[key]

    async def cell(self, layer: int, pos: int, feature: int) -> CellDetail:
        """DFA by head and by source of one (token, feature) of the last prompt run at `layer`."""

        def run() -> CellDetail:
            import torch

            from sae.analysis import dfa

            res = self._last.get(layer)
            sae = self._sae(layer)
            if res is None and self._run is not None and layer in self._run[1].layers:
                res = self._run[1].features(sae, layer, top_k=8)  # an older layer of the prompt on screen
                self._keep_last(layer, res)
            if res is None or res.acts is None:
                raise EngineError("run a prompt first")
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

    def _trace_key(self, prompt: str, layer: int, feature: int, pos: int | None, depth: int, keep: int) -> tuple:
        """Worker-side: what a trace depends on: the model, the content hash of every SAE up to `layer` (the trace
        reads them all), the prompt, the feature, the position (None: where it is strongest) and the pruning."""
        from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint

        self._sae(layer)
        return (model_fingerprint(self._model), tuple(sae_fingerprint(s) for x, s in sorted(self._saes.items()) if x <= layer),
                prompt, layer, feature, pos, depth, keep)

    def _remember_trace(self, key: tuple, view: TraceView) -> None:
        """Keep a trace under its key and under its resolved position (a trace asked at "strongest" is the same
        tree as the one at that position); at most 64, the oldest go first."""
        for k in (key, key[:5] + (view.pos,) + key[6:]):
            self._traces.pop(k, None)
            self._traces[k] = view
        while len(self._traces) > 64:
            self._traces.pop(next(iter(self._traces)))

    def _trace_sync(self, prompt: str, layer: int, feature: int, pos: int | None, depth: int, keep: int,
                    on_progress: Any = None, cancel: Any = None) -> TraceView:
        from sae.analysis.trace import trace_feature

        key = self._trace_key(prompt, layer, feature, pos, depth, keep)
        hit = self._traces.get(key)
        if hit is None:
            saes = self._resident([x for x in self._saes if x <= layer])
            hit = trace_view(trace_feature(self._model, saes, prompt, layer, feature, pos=pos, depth=depth, keep=keep,
                                           on_progress=on_progress, cancel=cancel))
        self._remember_trace(key, hit)
        return hit

    async def trace(self, prompt: str, layer: int, feature: int, pos: int | None = None, depth: int = 1, keep: int = 5) -> TraceView:
        """The recursive DFA tree of one feature (sae.analysis.trace.trace_feature), as one quick request (from
        memory when traced before; `run_trace` is the cancellable job)."""
        return await self.call(self._trace_sync, prompt, layer, feature, pos, depth, keep, channel="trace")

    async def trace_cached(self, prompt: str, layer: int, feature: int, pos: int | None = None, depth: int = 1,
                           keep: int = 5) -> TraceView | None:
        """The trace kept from an earlier request with exactly these inputs, or None (no computation)."""

        def run() -> TraceView | None:
            key = self._trace_key(prompt, layer, feature, pos, depth, keep)
            hit = self._traces.get(key)
            if hit is not None:
                self._remember_trace(key, hit)  # the most recent again
            return hit

        return await self.call(run, channel="trace")

    def run_trace(self, prompt: str, layer: int, feature: int, post: Post, pos: int | None = None, depth: int = 1,
                  keep: int = 5) -> JobHandle:
        """The trace as a job (progress per (head, source) term split, cancellable between them); the result is a
        `TraceView`, also kept in memory for `trace_cached`."""
        label = f"trace of L{layer} F{feature} at {'strongest' if pos is None else pos}"

        def job(rep: Reporter) -> TraceView:
            def progress(p: Progress) -> None:  # the job line names the job: "trace of L1 F3 at 4: splitting terms"
                rep.progress(replace(p, stage=f"{label}: {p.stage}" if p.stage else label))

            progress(Progress("trace", 0, 0, unit="terms", stage="starting"))
            self._need_model()
            return self._trace_sync(prompt, layer, feature, pos, depth, keep, on_progress=progress, cancel=rep.cancel)

        return self.start_job("trace", job, post, label=label,
                              key=f"trace:{layer}:{feature}:{pos}:{depth}:{keep}:{hash(prompt)}")

    # ---- feature pages and the head survey ------------------------------------------------------------

    def _dashboard(self, layer: int, feature: int) -> DashboardView:
        sae = self._sae(layer)
        if not 0 <= feature < sae.cfg.d_sae:
            raise EngineError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
        return dashboard_view(self._model, sae, layer, feature, lambda: self._layer_roles(layer), self.label_store())

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
        """The head survey over every layer with an SAE whose dashboards are built (sae.analysis.heads), as one
        quick request (from the analysis cache when it holds it; `run_heads` is the cancellable job)."""

        def run() -> HeadsView:
            self._need_model()
            return heads_view(self._model, self._resident(), self.label_store())

        return await self.call(run, channel="heads")

    async def heads_cached(self) -> HeadsView | None:
        """The head survey from the analysis cache, or None when it must be computed (`run_heads`)."""

        def run() -> HeadsView | None:
            self._need_model()
            return heads_view(self._model, self._saes, self.label_store(), cached_only=True)

        return await self.call(run, channel="heads")

    def run_heads(self, post: Post) -> JobHandle:
        """The head survey as a job (progress per layer and per induction-test batch; cancellable); the result is
        a `HeadsView`, also kept in the analysis cache."""

        def job(rep: Reporter) -> Any:
            def progress(p: Progress) -> None:  # the job line names the job: "head survey, layer 1: roles"
                rep.progress(replace(p, stage=f"head survey, {p.stage}" if p.stage else "head survey"))

            progress(Progress("heads", 0, 0, unit="layers", stage="starting"))
            self._need_model()
            return heads_view(self._model, self._resident(), self.label_store(), on_progress=progress, cancel=rep.cancel)

        return self.start_job("heads", job, post, label="head survey", key="heads")

    def _layer_roles(self, layer: int) -> Any:
        """Worker-side: the layer's `sae.analysis.roles.LayerRoles`, scored once per built dashboard directory and
        asked by the dashboard header and the study (the head survey's cached roles come from the same scoring and
        the same induction-test seed, `roles.CONFIRM_SEED`: one role per feature everywhere)."""
        from sae.analysis.dashboards import dashboard_dir
        from sae.analysis.roles import LayerRoles, model_confirmer

        sae = self._sae(layer)
        directory = dashboard_dir(self._model, sae, layer)
        if directory not in self._roles:
            self._roles[directory] = LayerRoles(directory, confirm=model_confirmer(self._model, sae, layer))
        return self._roles[directory]

    # ---- the labelling study (sae.analysis.study, sae.analysis.labels) -------------------------------------

    async def study_layer(self, layer: int, n: int, seed: int) -> Any:
        """`sae.analysis.study.StudyLayer` (frozen): `n` random live features of `layer` (seeded) and their
        automatic roles, as one quick request (from the analysis cache when it holds it)."""

        def run() -> Any:
            from sae.analysis import cache
            from sae.analysis.dashboards import dashboard_dir

            model, sae = self._need_model(), self._sae(layer)
            return cache.study_sample(model, sae, layer, n, seed, dashboard_dir(model, sae, layer))

        return await self.call(run, channel=f"study-{layer}")

    def _study_layers(self, n: int, seed: int, rep: Reporter | None = None) -> StudyView | None:
        """Worker-side: the study sample of every SAE layer. Without `rep`, only from the analysis cache (None when
        a layer must be computed); with it, computing what the cache lacks, reporting per layer and per
        induction-test batch. A layer whose dashboards are not built is a note, not a failure."""
        from sae.analysis import cache
        from sae.analysis.dashboards import DashboardError, build_command, dashboard_dir, is_built

        model = self._need_model()
        layers, notes = [], []
        order = sorted(self._saes)
        for i, layer in enumerate(order):
            sae = self._sae(layer)
            directory = dashboard_dir(model, sae, layer)
            if rep is None:
                if not is_built(directory):
                    notes.append(f"layer {layer}: dashboards for layer {layer} are not built yet; run "
                                 f"`{build_command(layer)}`")
                    continue
                hit = cache.cached_study_sample(model, sae, layer, n, seed, directory)
                if hit is None:
                    return None
                layers.append(hit)
                continue
            stage = f"study sample, layer {layer}"
            rep.progress(Progress("study", i, len(order), unit="layers", stage=stage))

            def progress(p: Progress, stage: str = stage) -> None:  # "study sample, layer 1: induction test 3/8"
                rep.progress(replace(p, job="study", stage=f"{stage}: {p.stage or p.job}"))

            try:
                layers.append(cache.study_sample(model, sae, layer, n, seed, directory, on_progress=progress,
                                                 cancel=rep.cancel))
            except DashboardError as exc:  # not built: a note, the other layers go on
                notes.append(f"layer {layer}: {exc}")
        if rep is not None:
            rep.progress(Progress("study", len(order), len(order), unit="layers", stage="study sample: done"))
        return StudyView(tuple(layers), tuple(notes))

    async def study_cached(self, n: int, seed: int) -> StudyView | None:
        """The study sample of every SAE layer from the analysis cache, or None when a layer must be computed
        (`run_study`)."""
        return await self.call(self._study_layers, n, seed, channel="study")

    def run_study(self, n: int, seed: int, post: Post) -> JobHandle:
        """The study sample of every SAE layer as a job (progress per layer and induction-test batch; cancellable);
        the result is a `StudyView`, each layer also kept in the analysis cache."""
        return self.start_job("study", lambda rep: self._study_layers(n, seed, rep), post, label="study sample",
                              key=f"study:{n}:{seed}")

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
        the result is an `InductionView`."""

        def job(rep: Reporter) -> Any:
            from sae.analysis.cache import cached
            from sae.analysis.dashboards.store import model_fingerprint
            from sae.experiments import induction

            model = self._need_model()
            seq = min(128, model.n_ctx)
            return induction_view(cached("induction", {"model": model_fingerprint(model), "n": n, "seq_len": seq, "seed": seed},
                          lambda: induction.synthetic_induction(model, n=n, seq_len=seq, seed=seed,
                                                                on_progress=rep.progress, cancel=rep.cancel)))

        return self.start_job("induction", job, post, label="induction experiment", key="induction")

    def run_ioi(self, experiment: str, n: int, layer: int | None, post: Post, seed: int = 0) -> JobHandle:
        """One IOI experiment (sae.experiments.ioi) on a fresh dataset (split "all", as the CLI); the result is an
        `ExperimentView`."""

        def job(rep: Reporter) -> Any:
            from sae.analysis.cache import cached
            from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint
            from sae.experiments import ioi

            model = self._need_model()

            def run() -> Any:
                data = ioi.build_dataset(model, n, seed=seed)
                return ioi.run_experiment(experiment, model, data, self._resident(), layer=layer, on_progress=rep.progress,
                                          cancel=rep.cancel)

            parts = {"model": model_fingerprint(model), "experiment": experiment, "n": n, "layer": layer, "seed": seed,
                     "saes": {str(x): sae_fingerprint(s) for x, s in sorted(self._saes.items())}}
            return experiment_view(cached("ioi", parts, run))

        return self.start_job("ioi", job, post, label=f"IOI {experiment}", key="ioi")

    def run_proxy(self, layer: int, feature: int, rule: str, post: Post, rows: int = 64) -> JobHandle:
        """A feature against a proxy on held-out text (sae.analysis.proxy.proxy_study); the result is a
        `ProxyView`. A rule that cannot be read fails the job with its one-line `ProxyError`."""

        def job(rep: Reporter) -> Any:
            from sae.analysis.dashboards.scan import DashboardSpec
            from sae.analysis.proxy import parse_proxy, proxy_study
            from sae.engine.activations import pack_tokens
            from sae.zoo import corpus_texts

            model = self._need_model()
            sae = self._sae(layer)
            proxy = parse_proxy(rule, model.encode)
            seq = min(128, model.n_ctx)
            docs, chars = [], 0
            for doc in corpus_texts(DashboardSpec().corpus, "heldout", synthetic=False):
                docs.append(doc)
                chars += len(doc)
                if chars > rows * seq * 8:  # enough text for `rows` rows; the rest is not tokenised
                    break
            token_rows = pack_tokens(docs, model.encode, seq, model.bos_token_id, max_rows=rows)
            if len(token_rows) == 0:
                raise EngineError(f"the held-out text is shorter than one row of {seq} tokens")
            study = proxy_study(model, sae, layer, feature, proxy, token_rows, source="held-out text",
                                on_progress=rep.progress, cancel=rep.cancel)
            return proxy_view(study)

        return self.start_job("proxy", job, post, label=f"proxy of L{layer} F{feature}", key=f"proxy:{layer}")

    def train(self, form: dict[str, Any], corpus: str, out_dir: str, resume: bool, post: Post) -> JobHandle:
        """Train SAEs on the open model (sae.engine.training.loop.train_saes); the result is `{layer: SAE}`. A fresh
        run (not `resume`) into a directory that holds one is refused: a finished run is never overwritten."""
        if not resume and existing_run(out_dir):
            raise EngineError(f"{out_dir} already holds a training run ({existing_run(out_dir)}); u resumes it, or pick "
                              "another output dir")

        def job(rep: Reporter) -> Any:
            from sae.engine.training import loop as training
            from sae.zoo.token_cache import cached_token_rows

            model = self._need_model()
            if resume:  # the run's own saved settings, whatever the (perhaps relaunched, reset) form shows
                cfg = saved_run_config(out_dir)
                run_corpus = cfg.corpus or corpus
            else:  # everything not in the form (warm-up, dead window, resampling) is TrainConfig's default
                cfg = training.TrainConfig(model_name=model.name, corpus=corpus,
                                           **{"context_size": min(128, model.n_ctx), **form})
                run_corpus = corpus
            rows_needed = cfg.total_tokens // max(1, cfg.context_size - 1) + cfg.rows_per_pass
            # a bad corpus is a CorpusError from sae/ (passed on as it is); any other failure is a bug
            rows = cached_token_rows(model, run_corpus, cfg.context_size, split="train", max_rows=rows_needed)
            if rows.shape[0] == 0:
                raise EngineError(f"corpus {run_corpus!r} is too small for one {cfg.context_size}-token row")
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
            for x in layers:
                self._sae(x)  # EngineError for a layer without an SAE
            saes = self._resident(layers)
            out = dash.build_layers(self._model, saes, spec, docs=texts, on_progress=progress, cancel=rep.cancel)
            for x in layers:  # rebuilt: score its roles again when next asked
                self._roles.pop(dash.dashboard_dir(self._model, saes[x], x), None)
            return out

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
