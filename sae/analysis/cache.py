"""Cached analysis results: the head survey, automatic roles (with their induction test), the study sample and SAE
evaluations are computed once per (model, SAE content hash, dashboard build or token rows, parameters) and read
back afterwards.

A result lives in `<cache>/results/<kind>/<key>.pkl` (`<cache>`: `$ATTNSCOPE_CACHE_DIR` or the user cache dir),
written atomically through `sae.engine.safe_io`. The key hashes everything that changes the result: the model's
fingerprint, each SAE's content hash (`sae_fingerprint`, so a changed SAE file gives a new key), the dashboard
build each analysis reads (its files' size and modification time), the human labels where they take part, the
rules' text, the z convention and `FORMAT`. A damaged or foreign cache file is a miss, never an error, and is
read with an unpickler that builds only attnscope's own classes and plain containers (never runs other code).

Long computations here follow the job protocol (`on_progress`, `cancel`); a cancelled one stores nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from sae.analysis.roles import CONFIRM_SEED
from sae.engine.jobs import CancelToken, Progress, ProgressFn, check_cancelled

T = TypeVar("T")
FORMAT = 1  # bump when a cached result's class changes shape


# ---- the store ----------------------------------------------------------------------------------------------


def results_dir() -> Path:
    from sae.analysis.dashboards.store import cache_root

    return cache_root() / "results"


def result_key(kind: str, parts: Mapping[str, Any]) -> str:
    """A file name from `parts` (JSON-able): 24 hex digits."""
    from sae.engine.z_convention import Z_CONVENTION

    blob = json.dumps({"kind": kind, "format": FORMAT, "z": Z_CONVENTION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:24]


_SAFE_BUILTINS = {"list", "dict", "set", "frozenset", "tuple", "str", "bytes", "int", "float", "bool", "complex",
                  "slice", "range", "NoneType"}
_SAFE_FUNCS = {("copyreg", "_reconstructor"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
               ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
               ("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes"),
               ("builtins", "object")}


class _Unpickler(pickle.Unpickler):
    """Builds attnscope's own classes (`sae.*`, types only), plain containers and tensors; refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module == "builtins" and name in _SAFE_BUILTINS) or (module, name) in _SAFE_FUNCS:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        if module.startswith("sae."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"refused {module}.{name}")


def load_result(kind: str, key: str) -> Any | None:
    """The stored result, or None (missing, damaged, or holding anything but attnscope's own classes)."""
    path = results_dir() / kind / f"{key}.pkl"
    try:
        data = path.read_bytes()
        return _Unpickler(io.BytesIO(data)).load()
    except Exception:  # noqa: BLE001 - a cache that does not read is a miss
        return None


def store_result(kind: str, key: str, value: Any) -> None:
    """Store `value`; a cache that cannot be written (read-only place, full disk) is skipped silently."""
    from sae.engine.errors import AttnscopeError
    from sae.engine.safe_io import atomic_write_bytes

    path = results_dir() / kind / f"{key}.pkl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, AttnscopeError):
        pass


def cached(kind: str, parts: Mapping[str, Any], compute: Callable[[], T], refresh: bool = False) -> T:
    """`compute()` once per key; later calls read it back (`refresh` computes again and replaces it)."""
    key = result_key(kind, parts)
    if not refresh:
        hit = load_result(kind, key)
        if hit is not None:
            return hit
    value = compute()
    store_result(kind, key, value)
    return value


# ---- what the keys are made of ------------------------------------------------------------------------------


def build_stamp(directory: Path) -> str:
    """A built dashboard directory's identity: its index and data files' sizes and modification times."""
    from sae.analysis.dashboards.store import DATA, INDEX

    out = [str(Path(directory).resolve())]
    for name in (INDEX, DATA):
        try:
            st = (Path(directory) / name).stat()
            out.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            out.append("-")
    return "|".join(out)


def _rules_text() -> str:
    from sae.analysis.roles import RULES

    return hashlib.sha1("\n".join(RULES).encode()).hexdigest()[:12]


def _sub(on_progress: ProgressFn | None, job: str, stage: str) -> ProgressFn | None:
    if on_progress is None:
        return None
    return lambda p: on_progress(replace(p, job=job, stage=f"{stage}: {p.stage or p.job}"))


# ---- cached analyses -----------------------------------------------------------------------------------------


def roles_parts(model: Any, sae: Any, layer: int, directory: Path, seed: int = CONFIRM_SEED) -> dict[str, Any]:
    from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint

    return {"model": model_fingerprint(model), "sae": sae_fingerprint(sae), "layer": layer,
            "build": build_stamp(directory), "seed": seed, "rules": _rules_text()}


def compute_roles(model: Any, sae: Any, layer: int, directory: Path, seed: int = CONFIRM_SEED,
                  on_progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Any:
    """`sae.analysis.roles.roles_layer` with the repeated-random-token test run on `model` (layers >= 1)."""
    from sae.analysis.roles import model_confirmer, roles_layer

    confirm = (model_confirmer(model, sae, layer, seed=seed, on_progress=on_progress, cancel=cancel)
               if layer >= 1 else None)
    return roles_layer(directory, confirm=confirm)


def layer_roles(model: Any, sae: Any, layer: int, directory: Path, seed: int = CONFIRM_SEED,
                on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                refresh: bool = False) -> Any:
    """The automatic roles of a layer's built dashboards (`RoleReport`), from the cache when it has them."""
    return cached("roles", roles_parts(model, sae, layer, directory, seed),
                  lambda: compute_roles(model, sae, layer, directory, seed, on_progress, cancel), refresh)


def survey_parts(model: Any, saes: Mapping[int, Any], directories: Mapping[int, Path],
                 labels: Mapping[int, Mapping[int, str]] | None, n_top: int, agree: float) -> dict[str, Any]:
    from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint

    return {"model": model_fingerprint(model), "name": str(getattr(model, "name", "")),
            "saes": {str(x): sae_fingerprint(saes[x]) for x in sorted(directories)},
            "builds": {str(x): build_stamp(d) for x, d in sorted(directories.items())},
            "labels": {str(x): sorted((int(f), str(v)) for f, v in (labels or {}).get(x, {}).items())
                       for x in sorted(directories)},
            "n_top": n_top, "agree": agree, "rules": _rules_text()}


def cached_head_survey(model: Any, saes: Mapping[int, Any], directories: Mapping[int, Path],
                       labels: Mapping[int, Mapping[int, str]] | None = None, n_top: int = 10,
                       agree: float = 1.0) -> Any | None:
    """The stored head survey for exactly these inputs, or None (no computation)."""
    return load_result("heads", result_key("heads", survey_parts(model, saes, directories, labels, n_top, agree)))


def head_survey(model: Any, saes: Mapping[int, Any], directories: Mapping[int, Path],
                labels: Mapping[int, Mapping[int, str]] | None = None, n_top: int = 10, agree: float = 1.0,
                on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                refresh: bool = False) -> Any:
    """`sae.analysis.heads.survey_heads` over `directories` ({layer: built dashboard dir}) with each layer's roles
    from `layer_roles` (cached apart, so a new human label recomputes only the cheap survey), reporting
    `Progress(job="heads", unit="layers")` per layer and the induction test's batches within it."""
    from sae.analysis.heads import survey_heads

    parts = survey_parts(model, saes, directories, labels, n_top, agree)
    key = result_key("heads", parts)
    if not refresh:
        hit = load_result("heads", key)
        if hit is not None:
            return hit
    layers = sorted(directories)
    roles = {}
    for i, layer in enumerate(layers):
        check_cancelled(cancel)
        if on_progress is not None:
            on_progress(Progress("heads", i, len(layers), unit="layers", stage=f"layer {layer}: roles"))
        roles[layer] = layer_roles(model, saes[layer], layer, directories[layer],
                                   on_progress=_sub(on_progress, "heads", f"layer {layer}"), cancel=cancel,
                                   refresh=refresh)
    check_cancelled(cancel)
    survey = survey_heads(dict(directories), model=str(getattr(model, "name", "")), n_top=n_top, agree=agree,
                          labels={k: dict(v) for k, v in (labels or {}).items()}, roles=roles)
    if on_progress is not None:
        on_progress(Progress("heads", len(layers), len(layers), unit="layers", stage="done"))
    store_result("heads", key, survey)
    return survey


def study_parts(model: Any, sae: Any, layer: int, n: int, seed: int, directory: Path) -> dict[str, Any]:
    from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint

    return {"model": model_fingerprint(model), "sae": sae_fingerprint(sae), "layer": layer, "n": n, "seed": seed,
            "build": build_stamp(directory), "rules": _rules_text()}


def cached_study_sample(model: Any, sae: Any, layer: int, n: int, seed: int, directory: Path) -> Any | None:
    """The stored study sample for exactly these inputs, or None (no computation)."""
    return load_result("study", result_key("study", study_parts(model, sae, layer, n, seed, directory)))


def study_sample(model: Any, sae: Any, layer: int, n: int, seed: int, directory: Path,
                 on_progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Any:
    """`sae.analysis.study.study_layer`, from the cache when the same sample was drawn before."""
    from sae.analysis.study import study_layer

    return cached("study", study_parts(model, sae, layer, n, seed, directory),
                  lambda: study_layer(model, sae, layer, n, seed, on_progress=on_progress, cancel=cancel))


# ---- SAE evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOutcome:
    """`sae.engine.metrics.evaluate_saes`' results (one `EvalResult` per layer, in its order) and whether they were
    read back from the cache (`from_cache`) rather than computed now."""

    results: list[Any]
    from_cache: bool


def eval_cache_enabled() -> bool:
    """False when `ATTNSCOPE_CACHE=off`: the switch that keeps results computed from a corpus (tokenised rows,
    evaluations) out of the cache."""
    import os

    return os.environ.get("ATTNSCOPE_CACHE", "").lower() not in ("off", "0", "none")


def eval_parts(model: Any, saes: Mapping[int, Any], token_rows: Any, batch_rows: int,
               exclude_special_tokens: bool) -> dict[str, Any]:
    """What an evaluation depends on: the model (fingerprint, dtype, device type), each SAE's content hash, the
    token rows themselves `[rows, pos]` (so the corpus, its split, the row length and the token budget are all in
    it), the batch size and the BOS rule."""
    from sae.analysis.dashboards.store import model_fingerprint, sae_fingerprint

    rows = token_rows.detach().to("cpu").contiguous()
    return {"model": model_fingerprint(model), "name": str(getattr(model, "name", "")),
            "dtype": str(getattr(model, "dtype", "")), "device": str(getattr(getattr(model, "device", None), "type", "")),
            "saes": {str(x): sae_fingerprint(s) for x, s in sorted(saes.items())},
            "rows": [list(rows.shape), str(rows.dtype), hashlib.sha1(rows.numpy().tobytes()).hexdigest()],
            "batch_rows": int(batch_rows), "exclude_special_tokens": bool(exclude_special_tokens)}


def evaluate(model: Any, saes: Mapping[int, Any], token_rows: Any, batch_rows: int = 8,
             exclude_special_tokens: bool = True, on_progress: ProgressFn | None = None,
             cancel: CancelToken | None = None, refresh: bool = False) -> EvalOutcome:
    """`sae.engine.metrics.evaluate_saes`, read back from the cache when the same model, SAE contents, token rows
    and settings were evaluated before (`refresh` computes again and replaces the stored results; with
    `ATTNSCOPE_CACHE=off` nothing is read or stored). Each result's `path` is the SAE's path of this call."""
    from sae.engine.metrics import evaluate_saes

    def compute() -> list[Any]:
        return evaluate_saes(model, dict(saes), token_rows, batch_rows=batch_rows, on_progress=on_progress,
                             cancel=cancel, exclude_special_tokens=exclude_special_tokens)

    if not eval_cache_enabled():
        return EvalOutcome(compute(), from_cache=False)
    key = result_key("eval", eval_parts(model, saes, token_rows, batch_rows, exclude_special_tokens))
    hit = None if refresh else load_result("eval", key)
    if isinstance(hit, list) and all(getattr(r, "layer", None) in saes for r in hit):
        return EvalOutcome([replace(r, path=str(saes[r.layer].cfg.extra.get("path", ""))) for r in hit],
                           from_cache=True)
    results = compute()
    store_result("eval", key, results)
    return EvalOutcome(results, from_cache=False)
