"""The researcher's moves on a prompt, as `Engine` methods (a mixin of `workbench.engine.core.Engine`) and their
frozen views: intervene on a feature (sae.analysis.intervene), the model's own next-token predictions and per-token
loss, one head's attention pattern, compare two prompts, and search the dashboards (sae.analysis.search).

Like every engine method, each is a thin wrapper over one `sae/` function; the adapters only rename and select.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from workbench.engine.worker import EngineError

if TYPE_CHECKING:
    from workbench.engine.views import ExperimentView, InductionView

# ---- views ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenView:
    token: str
    id: int
    logit: float
    prob: float


@dataclass(frozen=True)
class InterventionView:
    """One intervention (sae.analysis.intervene.Intervention): `top_before` / `top_after` at position `at`,
    `logit_change` there as (token, id, before, after), `downstream` as (layer, feature, pos, before, after).
    `data` is the whole result in the CLI's JSON form (for findings and exports)."""

    prompt: str
    layer: int
    describe: str
    at: int
    tokens: list[str]
    positions: tuple[int, ...]
    features: tuple[int, ...]
    activation: tuple[float, ...]
    new_activation: tuple[float, ...]
    top_before: tuple[TokenView, ...]
    top_after: tuple[TokenView, ...]
    logit_change: tuple[tuple[str, int, float, float], ...]
    loss_before: float
    loss_after: float
    downstream: tuple[tuple[int, int, int, float, float], ...]
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionsView:
    """The model's next-token top-k after every token (`top[t]`) and the loss of each actual next token
    (`loss[t]` for `tokens[t + 1]`)."""

    prompt: str
    tokens: list[str]
    top: tuple[tuple[TokenView, ...], ...]
    loss: tuple[float, ...]


@dataclass(frozen=True)
class PatternView:
    """One head's attention on a prompt: `values [query, key]` (rows sum to 1, zero above the diagonal)."""

    prompt: str
    layer: int
    head: int
    tokens: list[str]
    values: np.ndarray


@dataclass(frozen=True)
class CompareView:
    """The same features on two prompts: `a[i]`, `b[i]` the peak activation of `features[i]` on each prompt
    (clean vs corrupted), sorted by |b - a|."""

    layer: int
    prompt_a: str
    prompt_b: str
    features: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]


@dataclass(frozen=True)
class SearchHitView:
    layer: int
    feature: int
    score: float
    why: str  # what matched: "mean 2.1 on ' the'", "label: ...", "example: ..."


def _tokens(xs: Any) -> tuple[TokenView, ...]:
    return tuple(TokenView(t.token, int(t.id), float(t.logit), float(t.prob)) for t in xs)


def intervention_view(res: Any, prompt: str, describe: str, at: int) -> InterventionView:
    """sae.analysis.intervene.Intervention -> the explore panel's view."""
    return InterventionView(
        prompt=prompt, layer=res.layer, describe=describe, at=at, tokens=list(res.tokens),
        positions=tuple(res.positions), features=tuple(res.features), activation=tuple(res.activation),
        new_activation=tuple(res.new_activation), top_before=_tokens(res.top_before), top_after=_tokens(res.top_after),
        logit_change=tuple((c.token, c.id, c.before, c.after) for c in res.logit_change),
        loss_before=res.loss_before, loss_after=res.loss_after,
        downstream=tuple((d.layer, d.feature, d.pos, d.before, d.after) for d in res.downstream),
        data=res.to_dict(),
    )


# ---- the methods -----------------------------------------------------------------------------------------


class ResearchMethods:
    """Mixed into `Engine`: uses its `call`, `_need_model`, `_sae` and `_saes`."""

    _model: Any
    _saes: dict[int, Any]

    async def intervene(self, prompt: str, layer: int, feature: int, mode: str, value: float = 0.0,
                        pos: int | str | None = None, at: int | None = None, top: int = 10) -> InterventionView:
        """Set / scale / ablate one feature (sae.analysis.intervene.intervene) and read the next-token top-k at
        position `at` (default the last)."""

        def run() -> InterventionView:
            from sae.analysis.intervene import Edit, intervene

            self._sae(layer)  # type: ignore[attr-defined]
            edit = Edit(feature, mode, value, pos)  # type: ignore[arg-type]
            res = intervene(self._model, self._saes, prompt, layer, [edit], top=top, at=at)
            n = len(res.tokens)
            return intervention_view(res, prompt, edit.describe(), n - 1 if at is None else at % n)

        return await self.call(run, channel="intervene")  # type: ignore[attr-defined]

    async def predictions(self, prompt: str, top: int = 10) -> PredictionsView:
        """The model's next-token top-k at every position and the per-token loss (sae.analysis.intervene.predictions)."""

        def run() -> PredictionsView:
            from sae.analysis.intervene import predictions

            p = predictions(self._need_model(), prompt, top=top)  # type: ignore[attr-defined]
            return PredictionsView(prompt=prompt, tokens=list(p.tokens), top=tuple(_tokens(row) for row in p.top),
                                   loss=tuple(p.loss))

        return await self.call(run, channel="predict")  # type: ignore[attr-defined]

    async def pattern(self, prompt: str, layer: int, head: int) -> PatternView:
        """One head's attention pattern on a prompt (sae.analysis.intervene.attention_pattern)."""

        def run() -> PatternView:
            from sae.analysis.intervene import attention_pattern

            model = self._need_model()  # type: ignore[attr-defined]
            if not 0 <= layer < model.n_layers:
                raise EngineError(f"layer {layer} is outside the model (layers 0..{model.n_layers - 1})")
            toks, p = attention_pattern(model, prompt, layer, head)
            return PatternView(prompt=prompt, layer=layer, head=head, tokens=toks, values=p.numpy())

        return await self.call(run, channel="pattern")  # type: ignore[attr-defined]

    async def compare(self, prompt_a: str, prompt_b: str, layer: int, top: int = 16) -> CompareView:
        """The features strongest on either prompt, their peak activation on each (sae.analysis.intervene.compare)."""

        def run() -> CompareView:
            from sae.analysis.intervene import compare_prompts

            c = compare_prompts(self._need_model(), self._sae(layer), prompt_a, prompt_b, top=top)  # type: ignore[attr-defined]
            return CompareView(layer=layer, prompt_a=prompt_a, prompt_b=prompt_b, features=tuple(c.features),
                               a=tuple(c.a), b=tuple(c.b))

        return await self.call(run, channel="compare")  # type: ignore[attr-defined]


def _hit_views(res: Any) -> tuple[SearchHitView, ...]:
    return tuple(SearchHitView(h.layer, h.feature, h.score, h.why) for h in res.hits)


class SearchMethods:
    """Mixed into `Engine`: the feature search (sae.analysis.search)."""

    _model: Any
    _saes: dict[int, Any]

    def _built_dirs(self) -> dict[int, Any]:
        from sae.analysis.dashboards import build_command, dashboard_dir, is_built

        self._need_model()  # type: ignore[attr-defined]
        dirs = {x: dashboard_dir(self._model, s, x) for x, s in sorted(self._saes.items())}
        built = {x: d for x, d in dirs.items() if is_built(d)}
        if not built:
            first = min(dirs)
            raise EngineError(f"searching features reads the built dashboards; run `{build_command(first)}` (or b on screen 2)")
        return built

    async def search(self, kind: str, query: str, prompt: str = "", pos: int = -1, top: int = 20) -> tuple[SearchHitView, ...]:
        """Features by `kind` (token, text, label, role: from the dashboards; position: `pos` of `prompt` over the
        whole SAE of every layer). Newer searches make older ones stale."""

        def run() -> tuple[SearchHitView, ...]:
            from sae.analysis import search

            if kind == "position":
                self._need_model()  # type: ignore[attr-defined]
                return _hit_views(search.at_position(self._model, self._saes, prompt, pos, top=top))
            dirs = self._built_dirs()
            if kind == "token":
                return _hit_views(search.by_token(dirs, query, top))
            if kind == "text":
                return _hit_views(search.by_text(dirs, query, top))
            if kind == "label":
                return _hit_views(search.by_label(dirs, self.label_store(), query, top))  # type: ignore[attr-defined]
            if kind == "role":
                return _hit_views(search.by_role(dirs, query, top))
            raise EngineError(f"unknown search {kind!r}: token, text, label, role or position")

        return await self.call(run, channel="search")  # type: ignore[attr-defined]


class ResultStore:
    """Mixed into `Engine`: experiment results to and from plain JSON, so the last one is remembered across
    launches (the workbench's session file). Plain data work, safe on the UI thread."""

    @staticmethod
    def induction_to_dict(v: "InductionView") -> dict[str, Any]:
        """An `InductionView` as plain JSON (the session file keeps the last one)."""
        import json
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(v), default=str))

    @staticmethod
    def restore_induction(d: Mapping[str, Any]) -> "InductionView":
        """`induction_to_dict`'s JSON back as the view the induction screen draws (TypeError / KeyError /
        ValueError for a file another version wrote)."""
        from workbench.engine.views import InductionHeadView, InductionView

        def head(h: Mapping[str, Any]) -> InductionHeadView:
            return InductionHeadView(layer=int(h["layer"]), head=int(h["head"]),
                                     scores={str(k): float(v) for k, v in dict(h["scores"]).items()}, kind=str(h["kind"]))

        return InductionView(prefix_lengths=tuple(int(k) for k in d["prefix_lengths"]),
                             heads=tuple(head(h) for h in d["heads"]), found=tuple(head(h) for h in d["found"]),
                             rule=str(d["rule"]), sampling=str(d["sampling"]), design=str(d["design"]),
                             data=dict(d.get("data") or {}), n_per_length=int(d.get("n_per_length", 0)),
                             seq_len=int(d.get("seq_len", 0)), seed=int(d.get("seed", 0)))

    @staticmethod
    def experiment_to_dict(v: "ExperimentView") -> dict[str, Any]:
        """An `ExperimentView` as plain JSON (the session file keeps the last one)."""
        import json
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(v), default=str))

    @staticmethod
    def experiment_from_dict(d: Mapping[str, Any]) -> "ExperimentView":
        """`experiment_to_dict`'s JSON back as the IOI screen's view (TypeError / KeyError / ValueError for a file
        another version wrote)."""
        from workbench.engine.views import ExperimentView

        clean = d["clean_logit_diff"]
        return ExperimentView(experiment=str(d["experiment"]), n_prompts=int(d["n_prompts"]),
                              layer=d["layer"] if isinstance(d.get("layer"), int) else None, summary=str(d["summary"]),
                              clean_logit_diff=float(clean) if clean is not None else None,
                              records=tuple(dict(r) for r in d["records"]), sort_key=d.get("sort_key"),
                              settings=dict(d["settings"]), data=dict(d.get("data") or {}))
