"""The one door between the workbench and `sae/`: a worker thread that owns the model and SAEs.

All torch work runs on a single thread, so hooks registered by one analysis never fire in another's forward
pass. The UI talks to it through an asyncio API:

- `await engine.call(fn, ..., channel="features")`: a quick request. A newer request on the same channel makes
  older ones stale: they are dropped before they start, or their result is discarded, and the awaiter gets
  `StaleRequest` (the UI ignores it). This is what keeps typing in the prompt box cheap.
- `engine.start_job(kind, fn, post=...)`: a long job (training, dashboards, experiments). It reports through
  typed messages (`workbench.messages`), can be cancelled, and an exception becomes a `JobFailed` message, never
  a crash. While a long job runs, each of its progress reports also serves the quick requests waiting in line,
  so the explore screen keeps answering during a training run.

The domain methods (`features`, `dashboard`, `trace`, ...) are thin wrappers around `sae/` functions: the
workbench draws their results and never computes science itself.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from workbench.messages import JobCancelled, JobFailed, JobFinished, JobProgress, JobStarted

T = TypeVar("T")
Post = Callable[[Any], None]


class StaleRequest(Exception):
    """A newer request on the same channel replaced this one; its result would be out of date."""


class Cancelled(Exception):
    """Raised inside a long job (from `Reporter.progress`) when the user asked it to stop."""


class EngineError(Exception):
    """A request failed for a reason the user can act on; the message is one line."""


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

    from sae.engine.train_config import TrainConfig, field_default

    out: dict[str, FormField] = {}
    for f in dc_fields(TrainConfig):
        if f.name in names:
            d = field_default(f.name)
            text = "" if d is None or d == [] else f"{d:g}" if isinstance(d, float) else str(d)
            out[f.name] = FormField(f.name, f.name.replace("_", " "), f.metadata.get("help", ""), text,
                                    f.metadata.get("kind", ""), tuple(f.metadata.get("choices", ())))
    return out


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Reporter:
    """Handed to a long job: `progress(info)` posts a `JobProgress`, serves waiting quick requests and raises
    `Cancelled` once the user stopped the job. `cancel_event` can be passed to `sae/` functions that poll one."""

    job_id: int
    kind: str
    cancel_event: threading.Event
    _post: Post
    _serve: Callable[[], None]
    min_interval_s: float = 0.05
    _last: float = 0.0

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def progress(self, info: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        info = dict(info or {})
        final = info.get("total") is not None and info.get("done") == info.get("total")
        if final or now - self._last >= self.min_interval_s:  # a training loop may report thousands of times
            self._last = now
            self._post(JobProgress(self.job_id, self.kind, info))
        self._serve()
        if self.cancel_event.is_set():
            raise Cancelled()


@dataclass
class JobHandle:
    """A long job as the UI holds it."""

    id: int
    kind: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, finished, failed, cancelled

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")


@dataclass
class _Quick:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    channel: str | None
    generation: int


@dataclass
class _Long:
    handle: JobHandle
    fn: Callable[[Reporter], Any]
    post: Post


_STOP = object()


class Worker:
    """One thread, two lines: quick requests are served before long jobs, and during them."""

    def __init__(self, name: str = "attnscope-engine") -> None:
        self._quick: queue.SimpleQueue[_Quick] = queue.SimpleQueue()
        self._wake: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._long: list[_Long] = []
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    # ---- called from the event loop ---------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, channel: str | None = None, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the worker thread and await its result (or its exception)."""
        if self._closed:
            raise EngineError("the engine is shut down")
        loop = asyncio.get_running_loop()
        gen = 0
        if channel is not None:
            with self._lock:
                gen = self._generation.get(channel, 0) + 1
                self._generation[channel] = gen
        fut: asyncio.Future = loop.create_future()
        self._quick.put(_Quick(fn, args, kwargs, loop, fut, channel, gen))
        self._wake.put(None)
        return await fut

    def start_job(self, kind: str, fn: Callable[[Reporter], Any], post: Post) -> JobHandle:
        """Queue a long job; `fn(reporter)` runs on the worker thread and its result is posted as `JobFinished`."""
        if self._closed:
            raise EngineError("the engine is shut down")
        handle = JobHandle(id=next(self._ids), kind=kind)
        with self._lock:
            self._long.append(_Long(handle, fn, post))
        self._wake.put(None)
        return handle

    def is_current(self, channel: str, generation: int) -> bool:
        with self._lock:
            return self._generation.get(channel, 0) == generation

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread after the work in hand; running long jobs are asked to cancel."""
        self._closed = True
        with self._lock:
            for job in self._long:
                job.handle.cancel()
        self._wake.put(_STOP)
        self._thread.join(timeout)

    # ---- the worker thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            token = self._wake.get()
            self.serve_quick()
            with self._lock:
                job = self._long.pop(0) if self._long else None
            if job is not None:
                self._run_long(job)
                self._wake.put(None)  # look again: more jobs may be waiting
            if token is _STOP:
                self.serve_quick()
                return

    def serve_quick(self) -> None:
        """Run every quick request waiting now (also called from inside long jobs' progress reports)."""
        while True:
            try:
                req = self._quick.get_nowait()
            except queue.Empty:
                return
            self._run_quick(req)

    def _run_quick(self, req: _Quick) -> None:
        if req.future.cancelled():
            return
        if req.channel is not None and not self.is_current(req.channel, req.generation):
            _settle(req, exc=StaleRequest(req.channel))
            return
        try:
            result = req.fn(*req.args, **req.kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the awaiter
            _settle(req, exc=exc)
            return
        if req.channel is not None and not self.is_current(req.channel, req.generation):
            _settle(req, exc=StaleRequest(req.channel))
        else:
            _settle(req, result=result)

    def _run_long(self, job: _Long) -> None:
        h = job.handle
        if h.cancel_event.is_set():
            h.state = "cancelled"
            job.post(JobCancelled(h.id, h.kind))
            h.done.set()
            return
        h.state = "running"
        job.post(JobStarted(h.id, h.kind))
        reporter = Reporter(h.id, h.kind, h.cancel_event, job.post, self.serve_quick)
        try:
            result = job.fn(reporter)
        except Cancelled:
            h.state = "cancelled"
            job.post(JobCancelled(h.id, h.kind))
        except BaseException as exc:  # noqa: BLE001 - a failing job is a notification, never a crash
            if h.cancel_event.is_set():
                h.state = "cancelled"
                job.post(JobCancelled(h.id, h.kind))
            else:
                h.state = "failed"
                job.post(JobFailed(h.id, h.kind, one_line(exc)))
        else:
            if h.cancel_event.is_set():  # the sae/ function noticed the event and returned what it had
                h.state = "cancelled"
                job.post(JobCancelled(h.id, h.kind, result))
            else:
                h.state = "finished"
                job.post(JobFinished(h.id, h.kind, result))
        finally:
            h.done.set()


def _settle(req: _Quick, result: Any = None, exc: BaseException | None = None) -> None:
    def apply() -> None:
        if req.future.done():
            return
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(result)

    try:
        req.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass


# ---- the engine the app holds ---------------------------------------------------------------------------


@dataclass
class EngineInfo:
    """What the UI needs to know about the open model and SAEs (plain data, safe to read on the UI thread)."""

    model: str
    n_layers: int
    n_heads: int
    d_head: int
    n_ctx: int
    saes: str
    d_sae: dict[int, int]  # layer -> width, for every layer with an SAE

    @property
    def sae_layers(self) -> list[int]:
        return sorted(self.d_sae)


@dataclass
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


def _require(module: str) -> Any:
    """Import an `sae/` analysis module, or say plainly that it is not part of this build yet."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise EngineError(f"{module} is not available in this build") from exc
        raise


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
        # touched on the worker thread only
        self._model: Any = None
        self._saes: dict[int, Any] = {}
        self._last: dict[int, Any] = {}  # layer -> the last PromptFeatures, for drilling into cells

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

    def start_job(self, kind: str, fn: Callable[[Reporter], Any], post: Post) -> JobHandle:
        return self.worker.start_job(kind, fn, post)

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
        from sae.engine.models import ModelLoadError, load_model

        try:
            model = load_model(self.model_spec, device=self.device, dtype=self.dtype)
        except ModelLoadError as exc:
            raise EngineError(one_line(exc)) from exc
        saes = self._load_saes(self.saes_spec, model)
        self._model, self._saes, self._last = model, saes, {}
        self.info = self._describe()
        return self.info

    def _load_saes(self, spec: str, model: Any) -> dict[int, Any]:
        formats = _require("sae.engine.formats")
        from sae import zoo

        try:
            loaded = formats.load_sae_set(zoo.resolve_saes(spec), model, device=model.device)
        except (formats.SAEFormatError, ValueError, OSError, KeyError) as exc:
            raise EngineError(f"could not open SAEs {spec!r}: {one_line(exc)}") from exc
        saes = loaded if isinstance(loaded, dict) else {s.cfg.layer: s for s in loaded}
        if not saes:
            raise EngineError(f"no SAEs found in {spec!r}")
        return saes

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

    # ---- explore --------------------------------------------------------------------------------------

    async def features(self, prompt: str, layer: int, top_k: int = 8, columns: int = 24) -> dict[str, Any]:
        """Prompt features at `layer` (sae.analysis.dfa.prompt_features) as heatmap data.

        Returns `{"tokens": [str], "columns": [feature id], "values": [pos][column] activations,
        "truncated": bool, "layer": int}`; newer calls make older ones stale.
        """

        def run() -> dict[str, Any]:
            dfa = _require("sae.analysis.dfa")
            sae = self._sae(layer)
            try:
                res = dfa.prompt_features(self._model, sae, prompt, top_k=top_k, layer=layer)
            except dfa.PromptError as exc:
                raise EngineError(one_line(exc)) from exc
            self._last[layer] = res
            cols = res.top_features(columns)
            values = res.acts[:, cols].float().cpu().numpy() if cols else None
            return {
                "tokens": res.tokens, "columns": cols, "values": values, "truncated": res.truncated, "layer": layer,
            }

        return await self.call(run, channel="features")

    async def cell(self, layer: int, pos: int, feature: int) -> CellDetail:
        """DFA by head and by source of one (token, feature) of the last prompt run at `layer`."""

        def run() -> CellDetail:
            dfa = _require("sae.analysis.dfa")
            res = self._last.get(layer)
            if res is None or res.acts is None:
                raise EngineError("run a prompt first")
            sae = self._sae(layer)
            if not 0 <= pos < len(res.tokens):
                raise EngineError(f"position {pos} is outside the prompt")
            import torch

            with torch.no_grad():
                hs = dfa.head_source_matrix(res, sae, pos, feature)  # [H, pos + 1]
                bias = float(sae.encoder_bias_total[feature])
            return CellDetail(
                pos=pos, feature=feature, act=float(res.acts[pos, feature]), pre_act=float(res.pre[pos, feature]),
                dfa_heads=hs.sum(1).tolist(), dfa_bias=bias,
                dfa_src=hs.sum(0).tolist(), head_src=hs.tolist(),
            )

        return await self.call(run, channel="cell")

    async def trace(self, prompt: str, layer: int, feature: int, pos: int | None = None, depth: int = 1, keep: int = 5) -> Any:
        """The recursive DFA tree of one feature (sae.analysis.trace.trace_feature)."""

        def run() -> Any:
            trace = _require("sae.analysis.trace")
            self._sae(layer)
            try:
                return trace.trace_feature(self._model, self._saes, prompt, layer, feature, pos=pos, depth=depth, keep=keep)
            except ValueError as exc:  # TraceError, PromptError
                raise EngineError(one_line(exc)) from exc

        return await self.call(run, channel="trace")

    # ---- long jobs ------------------------------------------------------------------------------------

    @staticmethod
    def _steps(rep: Reporter) -> Callable[[int, int], None]:
        """`on_progress(done, total)` as `sae/` experiments call it -> a progress report."""
        return lambda done, total: rep.progress({"done": done, "total": total})

    def run_induction(self, n: int, post: Post, seed: int = 0) -> JobHandle:
        """Synthetic repeated-prefix induction scores per head (sae.experiments.induction.synthetic_induction)."""

        def job(rep: Reporter) -> Any:
            ind = _require("sae.experiments.induction")
            model = self._need_model()
            return ind.synthetic_induction(model, n=n, seq_len=min(128, model.n_ctx), seed=seed,
                                           on_progress=self._steps(rep), cancel=rep.cancel_event)

        return self.start_job("induction", job, post)

    def run_ioi(self, experiment: str, n: int, layer: int | None, post: Post, seed: int = 0) -> JobHandle:
        """One IOI experiment (sae.experiments.ioi); the result is drawn as `{summary, records, sort_key, ...}`."""

        def job(rep: Reporter) -> Any:
            ioi = _require("sae.experiments.ioi")
            self._need_model()
            return ioi_view(ioi, self._model, self._saes, experiment, n, layer, seed, self._steps(rep), rep.cancel_event)

        return self.start_job("ioi", job, post)

    def train(self, form: dict[str, Any], corpus: str, out_dir: str, resume: bool, post: Post) -> JobHandle:
        """Train SAEs on the open model (sae.engine.training.train_saes); the result is `{layer: SAE}`.

        `form` holds `TrainConfig` fields; everything not in it (warm-up, dead window, ...) is TrainConfig's own
        default, scaled to the run. Progress arrives as `{"progress": sae.engine.jobs.Progress, "done", "total"}`.
        """

        def job(rep: Reporter) -> Any:
            training = _require("sae.engine.training")
            from sae.engine.activations import CorpusError
            from sae.engine.token_cache import cached_token_rows

            model = self._need_model()
            try:
                cfg = training.TrainConfig(model_name=model.name, corpus=corpus,
                                           **{"context_size": min(128, model.n_ctx), **form})
                rows_needed = cfg.total_tokens // max(1, cfg.context_size - 1) + cfg.rows_per_pass
                rows = cached_token_rows(model, corpus, cfg.context_size, split="train", max_rows=rows_needed)
            except (training.TrainingError, CorpusError, OSError) as exc:
                raise EngineError(one_line(exc)) from exc

            def progress(p: Any) -> None:
                rep.progress({"progress": p, "done": p.done, "total": p.total})

            return training.train_saes(model, rows, cfg, out_dir, on_progress=progress,
                                       cancel=rep.cancel_event, resume=resume, device=model.device)

        return self.start_job("train", job, post)

    async def use_saes(self, saes: dict[int, Any], label: str) -> EngineInfo:
        """Explore with SAEs held in memory (a finished training run)."""
        return await self.call(self.add_saes_sync, saes, label, channel="saes")

    def build_dashboards(self, layer: int, post: Post) -> JobHandle:
        """Scan held-out text once and store every feature's dashboard (sae.analysis.dashboards)."""

        def job(rep: Reporter) -> Any:
            dash = _require("sae.analysis.dashboards")
            return dashboards_build(dash, self._need_model(), self._sae(layer), layer, rep.progress, rep.cancel_event)

        return self.start_job("dashboards", job, post)

    # ---- feature pages and the head survey ------------------------------------------------------------

    async def dashboard(self, layer: int, feature: int) -> dict[str, Any]:
        """The full dashboard of one feature as a view dict (see `screens.feature.dashboard_renderable`)."""

        def run() -> dict[str, Any]:
            sae = self._sae(layer)
            if not 0 <= feature < sae.cfg.d_sae:
                raise EngineError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
            return dashboard_view(self._model, sae, layer, feature)

        return await self.call(run, channel="dashboard")

    async def summary(self, layer: int, feature: int) -> dict[str, Any]:
        """The explore side panel's short version of `dashboard`."""

        def run() -> dict[str, Any]:
            sae = self._sae(layer)
            v = dashboard_view(self._model, sae, layer, feature)
            if not v.get("built"):
                raise EngineError(v.get("note", "no dashboard"))
            return v

        return await self.call(run, channel="summary")

    async def heads(self) -> dict[str, Any]:
        """The head survey over every layer with an SAE (sae.analysis.heads), as `{heads: [...], summary, rule}`."""

        def run() -> dict[str, Any]:
            heads = _require("sae.analysis.heads")
            self._need_model()
            return heads_view(heads, self._model, self._saes)

        return await self.call(run, channel="heads")


# ---- adapters: `sae/` results -> the plain dicts the screens draw ---------------------------------------
# They only rename and select; every number comes from the sae/ function they call.


def dashboard_view(model: Any, sae: Any, layer: int, feature: int) -> dict[str, Any]:
    from sae.analysis import dfa

    view: dict[str, Any] = {"layer": layer, "feature": feature, "built": False}
    view["head_shares"] = dfa.head_shares(sae, model.n_heads)[feature].tolist()
    try:
        dash = _require("sae.analysis.dashboards")
    except EngineError:
        view["note"] = "feature dashboards are not available in this build"
        return view
    return dashboards_view(dash, model, sae, layer, feature, view)


def dashboards_view(dash: Any, model: Any, sae: Any, layer: int, feature: int, view: dict[str, Any]) -> dict[str, Any]:
    """sae.analysis.dashboards.load_dashboard -> the feature screen's view dict (renames only)."""
    try:
        d = dash.load_dashboard(layer, feature, model, sae)
    except dash.DashboardError as exc:
        view["note"] = one_line(exc) + " (or press b on the feature screen)"
        return view

    def ex(e: Any) -> dict[str, Any]:
        return {"tokens": e.tokens, "active": e.center, "act": e.act}

    view.update(
        built=True, density=d.density, max_act=d.max_act, head_shares=d.head_shares,
        examples=[ex(e) for e in d.top[:10]],
        quantiles=[{"range": f"{q.lo:.3g}-{q.hi:.3g} ({q.share:.0%})", "examples": [ex(e) for e in q.examples]}
                   for q in reversed(d.quantiles)],
        histogram={"counts": d.histogram["counts"],
                   "edges": [10 ** e for e in d.histogram["log10_edges"]] if d.histogram["log10_edges"] else None},
        top_logits=list(d.logits_top), bottom_logits=list(d.logits_bottom), note=d.logit_note,
    )
    if d.dfa:
        first = d.dfa[0]
        view["top_dfa_src"] = {"tokens": first.src_tokens, "values": first.dfa_src, "active": len(first.src_tokens) - 1}
    return view


def dashboards_build(dash: Any, model: Any, sae: Any, layer: int, on_progress: Any, cancel: Any) -> Any:
    return dash.build_dashboards(model, sae, layer, progress=on_progress, cancel=cancel)


def heads_view(heads: Any, model: Any, saes: dict[int, Any]) -> dict[str, Any]:
    """sae.analysis.heads.survey_heads over the layers whose dashboards are built -> `{heads: [...], summary, rule}`."""
    dash = _require("sae.analysis.dashboards")
    dirs = {layer: dash.dashboard_dir(model, sae, layer) for layer, sae in saes.items()}
    built = {layer: d for layer, d in dirs.items() if dash.is_built(d)}
    if not built:
        first = min(saes)
        raise EngineError(f"the head survey reads built dashboards; run `{dash.build_command(first)}` (or b on screen 2)")
    survey = heads.survey_heads(built, model=model.name)
    rows = []
    for lh in survey.layers:
        for h in lh.heads:
            rows.append({
                "layer": h.layer, "head": h.head, "verdict": h.verdict, "main_family": h.main_family,
                "features": [{"id": f.id, "share": f.decoder_share, "family": f.family} for f in h.top_by_decoder],
            })
    missing = sorted(set(saes) - set(built))
    summary = f"{survey.polysemantic_fraction:.0%} of heads polysemantic"
    if missing:
        summary += f" · dashboards not built for layers {missing}"
    return {"heads": rows, "summary": summary, "rule": survey.criterion}


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


def ioi_view(ioi: Any, model: Any, saes: dict[int, Any], experiment: str, n: int, layer: int | None, seed: int,
             on_progress: Any, cancel: Any) -> dict[str, Any]:
    """sae.experiments.ioi.run_experiment on a fresh held-out dataset -> `{summary, records, sort_key, ...}` for the table."""
    try:
        data = ioi.build_dataset(model, n, seed=seed)
        out = ioi.run_experiment(experiment, model, data, saes, layer=layer, on_progress=on_progress, cancel=cancel)
    except ioi.IOIError as exc:
        raise EngineError(one_line(exc)) from exc
    lists = [k for k, v in out.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    records = [flat_record(r) for r in out[lists[0]]] if lists else []
    scalars = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary = f"{out.get('experiment', experiment)} · {out.get('n_prompts', n)} prompts · clean logit diff {out.get('clean_logit_diff', float('nan')):+.3f}"
    for k in ("accuracy", "layer"):
        if k in scalars:
            summary += f" · {k} {scalars[k]:.3g}" if isinstance(scalars[k], float) else f" · {k} {scalars[k]}"
    numeric = [k for k, v in (records[0].items() if records else []) if isinstance(v, float)]
    view = {k: v for k, v in out.items() if not isinstance(v, list)}
    view.update(summary=summary, records=records, sort_key=numeric[0] if numeric else None, raw=out)
    return view
