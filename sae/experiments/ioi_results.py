"""What the IOI experiments return: frozen dataclasses, one per experiment, each carrying the settings that made it.

`IOISettings` records how the prompts were drawn (N, seed, split, names, BOS, the corruption text of a noising run),
so a printed table, a JSON file or a finding can say which setting ran. `to_dict()` gives the JSON the CLI prints;
`rows()` the records of the experiment's main table (what a screen lists). Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class IOISettings:
    """The settings that made an IOI result.

    setting: "attnscope" (attnscope's own choices) or "paper" (the paper's code: no BOS, the mixed split, its name
    lists, its combined corruption text and name draw). split: all | train | heldout | mixed (the paper's
    BABA[:7] + ABBA[:7]). names: where the name pool came from ("attnscope", "paper", "given") and `n_names` how many
    of them the model keeps as single tokens.
    """

    model: str
    n_prompts: int
    seed: int
    split: str
    bos: bool
    setting: str = "attnscope"
    names: str = "attnscope"
    n_names: int = 0
    corruption_text: str = ""  # noising: what the combined corruption prepends and inserts, and how it draws names

    def describe(self) -> str:
        """One line: "setting paper: split mixed, seed 1, no BOS, 29 paper names"."""
        return (f"setting {self.setting}: split {self.split}, seed {self.seed}, {'BOS' if self.bos else 'no BOS'}, "
                f"{self.n_names} {self.names} names")


def _plain(v: Any) -> Any:
    """asdict output with tuples as lists (JSON-shaped)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class IOIResult:
    """Common to every experiment: its name, the settings and the clean logit difference (None for no prompts)."""

    experiment: str
    settings: IOISettings
    clean_logit_diff: float | None

    @property
    def n_prompts(self) -> int:
        return self.settings.n_prompts

    @property
    def sae_layer(self) -> int | None:
        """The SAE layer the result is about (features, path), else None."""
        return None

    def rows(self) -> tuple[Any, ...]:
        """The records of the main table (frozen dataclasses)."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: settings' fields at the top level beside the experiment's own fields."""
        out: dict[str, Any] = {"model": self.settings.model, "n_prompts": self.settings.n_prompts,
                               "experiment": self.experiment}
        out.update({k: v for k, v in asdict(self.settings).items() if k not in ("model", "n_prompts")})
        out["clean_logit_diff"] = self.clean_logit_diff
        for f in fields(self):
            if f.name not in ("experiment", "settings", "clean_logit_diff"):
                out[f.name] = _plain(asdict(self)[f.name])
        return out


@dataclass(frozen=True)
class OrderRow:
    order: str  # ABBA | BABA
    logit_diff: float | None
    accuracy: float | None


@dataclass(frozen=True)
class CleanResult(IOIResult):
    accuracy: float | None
    by_order: tuple[OrderRow, ...]

    def rows(self) -> tuple[OrderRow, ...]:
        return self.by_order


@dataclass(frozen=True)
class SpliceRow:
    layers: str  # "all" or one layer
    error_term: bool
    logit_diff: float | None
    recovered: float | None
    max_abs_change: float


@dataclass(frozen=True)
class SpliceResult(IOIResult):
    splices: tuple[SpliceRow, ...]

    def rows(self) -> tuple[SpliceRow, ...]:
        return self.splices


@dataclass(frozen=True)
class HeadRow:
    layer: int
    head: int
    zero_delta: float | None
    mean_delta: float | None


@dataclass(frozen=True)
class HeadsResult(IOIResult):
    ranking: str
    mean_ablation: str
    heads: tuple[HeadRow, ...]

    def rows(self) -> tuple[HeadRow, ...]:
        return self.heads


@dataclass(frozen=True)
class OrderDelta:
    delta: float | None
    delta_abba: float | None
    delta_baba: float | None


@dataclass(frozen=True)
class FeatureRow:
    feature: int
    n_active: int
    mean_act: float
    delta: float | None
    delta_abba: float | None
    delta_baba: float | None


@dataclass(frozen=True)
class FeaturesResult(IOIResult):
    layer: int
    position: str
    n_live: int
    d_sae: int
    ranking: str
    error_term: OrderDelta
    features: tuple[FeatureRow, ...]
    top_by_order: dict[str, list[int]]

    @property
    def sae_layer(self) -> int | None:
        return self.layer

    def rows(self) -> tuple[FeatureRow, ...]:
        return self.features


@dataclass(frozen=True)
class PathRow:
    feature: int
    heads: str  # "L.H" or "L.H,L.H" for the heads together
    n_active: int
    delta: float | None
    delta_abba: float | None
    delta_baba: float | None


@dataclass(frozen=True)
class PathResult(IOIResult):
    layer: int
    position: str
    features_picked: str
    features: tuple[int, ...]
    paths: tuple[PathRow, ...]

    @property
    def sae_layer(self) -> int | None:
        return self.layer

    def rows(self) -> tuple[PathRow, ...]:
        return self.paths


@dataclass(frozen=True)
class NoisingRow:
    corruption: str
    layers: str
    logit_diff: float | None
    recovered: float | None


@dataclass(frozen=True)
class ReferenceRow:
    reference: str
    logit_diff: float | None
    fraction: float | None
    skipped: str = ""


@dataclass(frozen=True)
class SkippedCorruption:
    corruption: str
    reason: str


@dataclass(frozen=True)
class NoisingResult(IOIResult):
    position: str
    layers: tuple[int, ...]
    corruptions: dict[str, str]
    recovered_is: str
    references: tuple[ReferenceRow, ...]
    references_are: str
    results: tuple[NoisingRow, ...]
    skipped: tuple[SkippedCorruption, ...]

    def rows(self) -> tuple[NoisingRow, ...]:
        return self.results

    def reference(self, name: str) -> ReferenceRow | None:
        return next((r for r in self.references if r.reference == name), None)
