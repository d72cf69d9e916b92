"""Human labels of SAE features: the random-feature labelling study of Kissane et al., and its report.

One JSON file holds every label: per (SAE, layer, feature) one record with a family or role (from an extendable
list that starts with the paper's), an interpretability rating, a note, the author and the time. Writes are safe
between processes: each one takes a lock file, re-reads the file, applies only its own change, writes a temporary
file and renames it over the old one (`os.replace`), so two running workbenches or CLIs never lose each other's
labels and a crash never leaves half a file.

The study: `sample_features` draws N random *live* features per layer (seeded); people label them; `study_report`
gives, per layer, the share of each family and of interpretable features (the paper's figure for GPT-2 Small).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae.engine.errors import AttnscopeError
from sae.engine.safe_io import atomic_write_text, os_error_line, read_text_file
from sae.engine.schema import Dict, Int, List, Obj, Optional, Str, check, parse_json
from sae.engine.safe_text import md_cell

# The words a human label may use (the file calls them "families"; any can be added): the first six are the
# automatic roles (`sae.analysis.roles.ROLES`, among them the paper's families induction and short- / long-range
# context), so a human label and an automatic role can be compared; then the other GPT-2 Small motifs the paper
# names. Wherever a human label is shown, it is shown as one ("human label, labels.json").
DEFAULT_FAMILIES: tuple[str, ...] = (
    "induction", "duplicate-token", "previous-token", "short-range context", "long-range context", "other",
    "successor", "name-mover", "copy-suppression", "preposition mover",
)
# Interpretability on a three-point scale, as in the shallow dives behind the paper's study: could a reader say
# what the feature does from its dashboard?
RATINGS: dict[int, str] = {2: "yes", 1: "maybe", 0: "no"}
INTERPRETABLE = 2  # the rating counted as "interpretable" in the report
UNRATED = "unrated"
FORMAT = 1
ENV = "ATTNSCOPE_LABELS"


class LabelError(AttnscopeError, ValueError):
    """A bad label (unknown family, rating off the scale) or an unreadable label file."""


def default_path() -> Path:
    """`$ATTNSCOPE_LABELS` when set, else `labels.json` in the user data directory (`$ATTNSCOPE_DATA_DIR` or the
    platform's; not the cache: labels are work, not something to rebuild)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    data = os.environ.get("ATTNSCOPE_DATA_DIR")
    if data:
        return Path(data).expanduser() / "labels.json"
    import platformdirs

    return Path(platformdirs.user_data_dir("attnscope")) / "labels.json"


@dataclass(frozen=True)
class Label:
    """One person's label of one feature. `sae` identifies the SAE (its content hash), `family` is one of the
    store's families, `rating` a key of `RATINGS` (None: not rated)."""

    sae: str
    layer: int
    feature: int
    family: str
    rating: int | None = None
    note: str = ""
    author: str = ""
    time: str = ""
    model: str = ""

    @property
    def key(self) -> str:
        return label_key(self.sae, self.layer, self.feature)

    @property
    def interpretable(self) -> bool:
        return self.rating == INTERPRETABLE


def label_key(sae: str, layer: int, feature: int) -> str:
    return f"{sae}/{int(layer)}/{int(feature)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _author() -> str:
    for var in ("ATTNSCOPE_AUTHOR", "USER", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return ""


@contextmanager
def _locked(lock_path: Path, timeout_s: float = 30.0) -> Iterator[None]:
    """An exclusive inter-process lock on `lock_path` (flock where there is one; else an O_EXCL lock file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lock_path, "a+")
        except OSError as exc:
            raise LabelError(f"cannot write beside the label file ({lock_path.parent}): {os_error_line(exc)}") from None
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return
    deadline = time.monotonic() + timeout_s  # pragma: no cover
    while True:  # pragma: no cover
        try:
            fd = os.open(str(lock_path) + ".x", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise LabelError(f"the label file {lock_path} stayed locked for {timeout_s:.0f} s") from None
            time.sleep(0.02)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        os.unlink(str(lock_path) + ".x")


class LabelStore:
    """The label file. Every read re-reads it; every write is locked, merged with what is on disk, and atomic."""

    def __init__(self, path: Path | str | None = None) -> None:
        if path is not None and not str(path).strip():
            raise LabelError("no label file given (an empty path)")
        self.path = Path(path) if path is not None else default_path()
        if not self.path.name or self.path.name in (".", ".."):
            raise LabelError(f"the label file {self.path} names a folder, not a file")
        self._lock = self.path.with_name(self.path.name + ".lock")

    # ---- the file ----------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            raw = read_text_file(self.path, "the label file")  # a FIFO, /dev/zero, a directory: one line, no hang
        except FileNotFoundError:
            return {"format": FORMAT, "families": list(DEFAULT_FAMILIES), "labels": {}}
        data = parse_json(raw, self.path)
        if not isinstance(data, dict) or "labels" not in data:
            raise LabelError(f"{self.path} is not an attnscope label file (no \"labels\" object)")
        return check(data, LABELS_SPEC, self.path)  # a wrong type is one line naming the field

    def _write(self, data: dict[str, Any]) -> None:
        """Atomically, through `safe_io`: the file's mode kept (644 stays 644), a read-only file refused, a
        symlink the user named written through (the link stays), a device or full disk one line."""
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))

    @contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        """Lock, read what is on disk now, let the caller change it, write it back atomically."""
        with _locked(self._lock):
            data = self._read()
            yield data
            self._write(data)

    # ---- reading -----------------------------------------------------------------------------------------

    def families(self) -> list[str]:
        return list(self._read()["families"])

    def labels(self, sae: str | None = None, layer: int | None = None) -> list[Label]:
        """Every label (optionally of one SAE and/or layer), ordered by SAE, layer, feature."""
        out = []
        for rec in self._read()["labels"].values():
            lab = Label(**{k: rec.get(k, d) for k, d in _FIELDS.items()})
            if (sae is None or lab.sae == sae) and (layer is None or lab.layer == layer):
                out.append(lab)
        return sorted(out, key=lambda x: (x.sae, x.layer, x.feature))

    def get(self, sae: str, layer: int, feature: int) -> Label | None:
        rec = self._read()["labels"].get(label_key(sae, layer, feature))
        return Label(**{k: rec.get(k, d) for k, d in _FIELDS.items()}) if rec else None

    # ---- writing -----------------------------------------------------------------------------------------

    def put(
        self, sae: str, layer: int, feature: int, family: str, rating: int | None = None, note: str = "",
        author: str | None = None, model: str = "",
    ) -> Label:
        """Set (or replace) the label of one feature."""
        if rating is not None and rating not in RATINGS:
            raise LabelError(f"rating must be one of {', '.join(f'{k} ({v})' for k, v in RATINGS.items())}; got {rating}")
        if int(layer) < 0 or int(feature) < 0:
            raise LabelError("layer and feature must be >= 0")
        with self._transaction() as data:
            if family not in data["families"]:
                raise LabelError(f"unknown family {family!r}; known: {', '.join(data['families'])} (add one with "
                                 "`attnscope study families --add NAME`)")
            lab = Label(sae, int(layer), int(feature), family, rating, note, _author() if author is None else author,
                        _now(), model)
            data["labels"][lab.key] = asdict(lab)
        return lab

    def update(self, sae: str, layer: int, feature: int, **changes: Any) -> Label:
        """Change some fields of an existing label (e.g. its note), keeping the rest."""
        old = self.get(sae, layer, feature)
        if old is None:
            raise LabelError(f"feature {feature} of layer {layer} has no label yet")
        merged = {**asdict(old), **changes}
        return self.put(sae, layer, feature, merged["family"], merged["rating"], merged["note"], merged["author"],
                        merged["model"])

    def remove(self, sae: str, layer: int, feature: int) -> bool:
        with self._transaction() as data:
            return data["labels"].pop(label_key(sae, layer, feature), None) is not None

    def add_family(self, name: str) -> list[str]:
        name = " ".join(name.split())
        if not name:
            raise LabelError("a family needs a name")
        with self._transaction() as data:
            if name not in data["families"]:
                data["families"].append(name)
            return list(data["families"])

    # ---- study position (resume) ----------------------------------------------------------------------------

    def position(self, study: str) -> int:
        return int(self._read().get("positions", {}).get(study, 0))

    def set_position(self, study: str, index: int) -> None:
        with self._transaction() as data:
            data.setdefault("positions", {})[study] = int(index)


LABEL_SPEC = Obj(
    required={"layer": Int(min=0), "feature": Int(min=0), "family": Str()},
    optional={"sae": (Str(), ""), "rating": (Optional(Int(min=min(RATINGS), max=max(RATINGS))), None),
              "note": (Str(), ""), "author": (Str(), ""), "time": (Str(), ""), "model": (Str(), "")},
)
LABELS_SPEC = Obj(
    required={"labels": Dict(LABEL_SPEC)},
    optional={"families": (List(Str(nonempty=True)), list(DEFAULT_FAMILIES)), "positions": (Dict(Int(min=0)), {}),
              "format": (Int(), FORMAT)},
)

_FIELDS: dict[str, Any] = {"sae": "", "layer": 0, "feature": 0, "family": "other", "rating": None, "note": "",
                           "author": "", "time": "", "model": ""}


# ---- sampling -------------------------------------------------------------------------------------------


def sample_features(live: Sequence[int], n: int, seed: int, layer: int) -> list[int]:
    """`n` random live features of `layer` (all of them when fewer), seeded by (seed, layer): the same study
    draws the same features on every machine. In drawing order (the order to label them in)."""
    if n <= 0:
        raise LabelError(f"the number of features to sample must be positive, got {n}")
    rng = random.Random(f"attnscope-study|{seed}|{layer}")
    pool = sorted(int(i) for i in live)
    return rng.sample(pool, min(n, len(pool)))


def study_id(sae: str, layer: int, n: int, seed: int) -> str:
    return f"{sae}/{layer}/n{n}/s{seed}"


# ---- the report -----------------------------------------------------------------------------------------


@dataclass
class LayerShares:
    """Per layer: how many labels, the share of each family, the share rated interpretable."""

    model: str
    sae: str
    layer: int
    n: int
    counts: dict[str, int]
    shares: dict[str, float]
    n_rated: int
    interpretable: float | None  # share of rated labels with rating INTERPRETABLE
    ratings: dict[str, int] = field(default_factory=dict)


@dataclass
class StudyReport:
    families: list[str]
    ratings: dict[int, str]
    layers: list[LayerShares]
    agreement: dict[str, Any] = field(default_factory=dict)  # layer -> sae.analysis.roles.agreement
    notes: list[str] = field(default_factory=list)
    # (sae, layer) -> {feature: family}: the labels the shares were counted from (not exported)
    human: dict[tuple[str, int], dict[int, str]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("human")
        d["ratings"] = {str(k): v for k, v in self.ratings.items()}
        return d


def layer_shares(labels: Iterable[Label], families: Sequence[str]) -> list[LayerShares]:
    """Group labels by (SAE, layer) and count families and ratings."""
    groups: dict[tuple[str, int], list[Label]] = {}
    for lab in labels:
        groups.setdefault((lab.sae, lab.layer), []).append(lab)
    out = []
    for (sae, layer), labs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        fams = list(families) + sorted({x.family for x in labs} - set(families))
        counts = {f: sum(x.family == f for x in labs) for f in fams}
        rated = [x for x in labs if x.rating is not None]
        ratings = {RATINGS[k]: sum(x.rating == k for x in rated) for k in RATINGS}
        ratings[UNRATED] = len(labs) - len(rated)
        out.append(LayerShares(
            model=next((x.model for x in labs if x.model), ""), sae=sae, layer=layer, n=len(labs), counts=counts,
            shares={f: c / len(labs) for f, c in counts.items()}, n_rated=len(rated),
            interpretable=sum(x.interpretable for x in rated) / len(rated) if rated else None, ratings=ratings,
        ))
    return out


def study_report(store: LabelStore, sae: str | None = None) -> StudyReport:
    """Shares per (SAE, layer) of every stored label (or one SAE's)."""
    fams = store.families()
    labels = store.labels(sae=sae)
    rep = StudyReport(families=fams, ratings=dict(RATINGS), layers=layer_shares(labels, fams))
    rep.human = {}
    for lab in labels:
        rep.human.setdefault((lab.sae, lab.layer), {})[lab.feature] = lab.family
    return rep


def human_families(labels: Iterable[Label]) -> dict[int, str]:
    """`{feature: family}` of one layer's labels."""
    return {lab.feature: lab.family for lab in labels}


# ---- a text stacked bar (terminal and markdown) ------------------------------------------------------------

BAR_GLYPHS = "█▓▒░▚▞▄▀■□"


def stacked_bar(shares: Mapping[str, float], width: int = 40, glyphs: str = BAR_GLYPHS) -> str:
    """One line of `width` characters, each family a run of its own glyph, runs in `shares` order, lengths by
    largest remainder so they add up to `width` exactly (when the shares add up to 1)."""
    keys = list(shares)
    total = sum(shares.values())
    if total <= 0:
        return "·" * width
    exact = [shares[k] / total * width for k in keys]
    cells = [int(x) for x in exact]
    for i in sorted(range(len(keys)), key=lambda i: -(exact[i] - cells[i]))[: width - sum(cells)]:
        cells[i] += 1
    return "".join(glyphs[i % len(glyphs)] * c for i, c in enumerate(cells))


# ---- tying labels to built dashboards ------------------------------------------------------------------------


def sae_id_of(directory: Path) -> tuple[str, str]:
    """(SAE id, model name) of a built dashboard directory: labels are keyed by the SAE's content hash, so they
    follow the SAE, not a path."""
    from sae.analysis.dashboards import dashboard_summary

    idx = dashboard_summary(Path(directory))
    return str(idx["sae_hash"]), str(idx.get("model", ""))


def human_labels_by_layer(store: LabelStore, directories: Mapping[int, Path]) -> dict[int, dict[int, str]]:
    """`{layer: {feature: family}}` of the stored labels of each layer's SAE (`{layer: built dashboard dir}`)."""
    out = {}
    for layer, d in directories.items():
        sae, _ = sae_id_of(d)
        out[layer] = human_families(store.labels(sae=sae, layer=layer))
    return out


def add_agreement(report: StudyReport, directories: Mapping[int, Path], confirm: Mapping[int, Any] | None = None) -> None:
    """Fill `report.agreement[str(layer)]` with each automatic rule's agreement with the human labels of that layer
    (`sae.analysis.roles.agreement`), for the layers whose built dashboards belong to the labelled SAE."""
    from sae.analysis.roles import agreement, roles_layer

    confirm = confirm or {}
    for ls in report.layers:
        d = directories.get(ls.layer)
        if d is None:
            continue
        sae, _ = sae_id_of(d)
        if sae != ls.sae:
            report.notes.append(f"layer {ls.layer}: the labels are for SAE {ls.sae[:12]}, the dashboards for "
                                f"{sae[:12]}; no agreement computed")
            continue
        rep = roles_layer(d, confirm=confirm.get(ls.layer))
        a = agreement(rep.role_of(), report.human.get((ls.sae, ls.layer), {}))
        a["induction_test"] = rep.confirmation
        report.agreement[str(ls.layer)] = a


# ---- the report as markdown (the CLI's --md and the study screen's export) ---------------------------------------


def md_table(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return md_cell(str(v).replace("\n", " "))

    return "\n".join(["| " + " | ".join(map(cell, cols)) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def report_tables(d: dict) -> tuple[list[str], list[str], list[list[str]]]:
    """(families shown, columns, rows) of a `StudyReport.to_dict()`: one row per (SAE, layer); families nobody
    used are left out."""
    used = [f for f in d["families"] if any(ls["counts"].get(f) for ls in d["layers"])]
    used += sorted({f for ls in d["layers"] for f, c in ls["counts"].items() if c} - set(used))
    layers = [ls["layer"] for ls in d["layers"]]
    several = len(set(layers)) < len(layers)  # two SAEs of one layer: tell them apart by id
    cols = ["layer", "labels"] + used + ["interpretable (rated)"]
    rows = []
    for ls in d["layers"]:
        name = f"L{ls['layer']}" + (f" ({ls['sae'][:8]})" if several else "")
        interp = "-" if ls["interpretable"] is None else f"{ls['interpretable']:.0%} ({ls['n_rated']})"
        rows.append([name, str(ls["n"])] + [f"{ls['shares'].get(f, 0.0):.0%}" for f in used] + [interp])
    return used, cols, rows


def agreement_rows(d: dict) -> list[list[str]]:
    rows = []
    for layer, a in sorted(d["agreement"].items(), key=lambda kv: int(kv[0])):
        for r in a["roles"]:
            if r["n_auto"] or r["n_human"]:
                p = "-" if r["precision"] is None else f"{r['precision']:.0%}"
                rc = "-" if r["recall"] is None else f"{r['recall']:.0%}"
                rows.append([f"L{layer}", r["role"], str(r["n_auto"]), str(r["n_human"]), str(r["both"]), p, rc])
        acc = "-" if a["accuracy"] is None else f"{a['accuracy']:.0%}"
        rows.append([f"L{layer}", "(all: same label)", "", str(a["n"]), "", acc, ""])
    return rows


AGREE_COLS = ["layer", "automatic rule", "auto", "human", "both", "precision", "recall"]
RATING_NOTE = ("interpretable = rated yes on the scale yes (2) / maybe (1) / no (0), over the rated labels; family "
               "shares are over all labels of the layer")


def report_markdown(d: dict) -> str:
    used, cols, rows = report_tables(d)
    model = next((ls["model"] for ls in d["layers"] if ls["model"]), "")
    lines = [f"## Feature families by layer{f' of {model}' if model else ''} (human labels)", "",
             md_table(cols, rows), "", f"_{RATING_NOTE}._", "", "**Share of each family per layer**", "", "```"]
    width = 40
    for ls, row in zip(d["layers"], rows):
        lines.append(f"{row[0]:<6} {stacked_bar({f: ls['shares'].get(f, 0.0) for f in used}, width)}  n={ls['n']}")
    lines.append("```")
    lines.append("")
    lines.append("Legend: " + ", ".join(f"`{BAR_GLYPHS[i % len(BAR_GLYPHS)]}` {f}" for i, f in enumerate(used)))
    if d["agreement"]:
        lines += ["", "**Automatic roles against the human labels** (precision = both / auto, recall = both / human)",
                  "", md_table(AGREE_COLS, agreement_rows(d))]
        lines += [""] + [f"- layer {k}: induction test: {a['induction_test']}" for k, a in sorted(d["agreement"].items())]
    if d["notes"]:
        lines += [""] + [f"- {n}" for n in d["notes"]]
    return "\n".join(lines)
