"""`TrainConfig`: the one home of every training default, its help text and its validation.

The `attnscope train` flags, their defaults and help are generated from these fields (`cli_options()`), and the
workbench's training form reads the same fields; errors name fields ("warmup_steps must be >= 0"), never flags.
A field's metadata: `help` (one line), `flag` (the CLI flag, default `--field-name`), `kind` ("int", "float",
"str", "bool", "int_list", "float_list", "layers", "choice"), `choices`, `cli` (False: not a flag).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sae.engine.autoencoder import REGISTRY, TRAINABLE, Architecture
from sae.engine.errors import TrainingDiverged, TrainingError
from sae.engine.training.checkpoint import write_text

NORMALIZATIONS = ("none", "expected_average_only_in")
DECODER_NORMS = ("rescale", "unit")  # sae.engine.training.steps explains both


__all__ = ["DECODER_NORMS", "NORMALIZATIONS", "PRESETS", "TrainConfig", "TrainingDiverged", "TrainingError",
           "field_default", "option_fields", "paper_table"]


def opt(default: Any, help: str, kind: str = "", flag: str | None = None, choices: tuple = (), cli: bool = True,
        default_factory: Any = None, shown: str = "") -> Any:
    """A dataclass field carrying its CLI/form metadata (`shown`: how a None default is described)."""
    meta = {"help": help, "kind": kind, "flag": flag, "choices": choices, "cli": cli, "shown": shown}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as `train_config.json` beside the outputs.

    `l1_coeff` (standard) or `k` (topk) may be a list: a sparsity sweep, one SAE per value per layer, all trained
    from the same batches (`OUT/k8/blocks.L.attn.hook_z`, ...). Settings left at None are chosen from the run's
    length (`sae.engine.training.schedule.resolve_schedule`).
    """

    layers: list[int] = opt(None, "layers to train: a comma list (0,1,2) or 'all'", kind="layers",
                            default_factory=list)
    architecture: str = opt(
        "topk",
        "topk (default): fixes L0 at k on every layer whatever its activation norms, and AuxK keeps latents "
        "alive; standard: the paper's ReLU + L1 recipe",
        kind="choice", choices=TRAINABLE)
    d_sae: int | None = opt(None, "SAE width, features per layer", kind="int", flag="--width",
                            shown="expansion x d_in")
    expansion: int = opt(8, "d_sae = expansion x n_heads x d_head when --width is not given", kind="int")
    l1_coeff: float | list[float] = opt(
        1.5, "L1 coefficient (standard), on normalised activations (1.5: L0 ~60, explained variance ~0.81 on the "
        "embedded default's layers at 2M tokens; 2: L0 ~39); a comma list trains a sweep",
        kind="float_list", flag="--l1")
    k: int | list[int] = opt(32, "active latents per token (topk); a comma list trains a sweep", kind="int_list")
    aux_k: int | None = opt(None, "topk: dead latents in the AuxK loss", kind="int", shown="d_in // 2")
    aux_coeff: float = opt(1 / 32, "topk: weight of the AuxK loss (Gao et al.: 1/32; 0 turns AuxK off)",
                           kind="float")
    normalize_activations: str = opt(
        "expected_average_only_in",
        "expected_average_only_in: train on z scaled so E||z|| = sqrt(d_in) (estimated on the first buffer), the "
        "scale folded into the saved weights so the saved SAE reads raw z; none: raw z",
        kind="choice", choices=NORMALIZATIONS, flag="--normalize")
    decoder_norm: str | None = opt(
        None,
        "rescale: decoder rows are free and each latent's activation is scaled by its row's norm (SAELens's "
        "rescale_acts_by_decoder_norm); rows start at norm 0.1, the encoder their transpose, so the directions "
        "learn fast at a small lr; unit: rows held at unit norm (the paper's recipe). Saved SAEs always have "
        "unit rows", kind="choice", choices=DECODER_NORMS, shown="rescale for topk, unit for standard")
    b_dec_init: str = opt(
        "auto", "where b_dec starts: mean (the first buffer's mean activation), zeros, or auto (mean for topk; for "
        "standard, mean only when the mean carries >= 40% of the activations' energy)", kind="choice",
        choices=("auto", "mean", "zeros"))
    decoder_init_norm: float = opt(0.1, "rescale: the decoder rows' initial norm", kind="float", cli=False)
    lr: float = opt(1.2e-3, "Adam learning rate", kind="float")
    beta1: float = opt(0.9, "Adam beta1", kind="float")
    beta2: float = opt(0.99, "Adam beta2", kind="float")
    warmup_steps: int | None = opt(None, "linear LR warm-up steps, re-warmed after each resample", kind="int",
                                   shown="5% of the run's steps, at most 1000")
    total_tokens: int = opt(2_000_000, "training tokens", kind="int", flag="--tokens")
    batch_size: int = opt(4096, "activations per SAE step", kind="int")
    context_size: int = opt(128, "tokens per row, BOS first (the model's context if shorter)", kind="int")
    rows_per_pass: int = opt(32, "token rows per model forward pass", kind="int")
    prefetch: int = opt(
        0, "chunks of activations made ahead on a background thread, so the model's forward pass overlaps the SAE "
        "steps (0: off). Needs spare cores: on a 2-core CPU it measured slower (49k vs 58k tokens/s)", kind="int")
    buffer_batches: int = opt(16, "shuffle buffer size, in batches (half refilled when half consumed)", kind="int")
    seed: int = opt(0, "random seed", kind="int")
    resample_every: int | None = opt(None, "standard: steps between dead-feature resamples, 0 = never", kind="int",
                                     shown="a tenth of the run's steps, at most 25000")
    resample_window: int | None = opt(None, "standard: steps over which a feature must stay silent to be "
                                      "resampled", kind="int", shown="half of resample_every")
    max_resamples: int = opt(4, "standard: resamples at most", kind="int")
    dead_threshold: float = opt(1e-6, "firing frequency at or below which a feature is dead when resampling",
                                kind="float")
    resample_sample: int = opt(8192, "inputs scored when choosing revival directions", kind="int", cli=False)
    dead_tokens: int | None = opt(None, "tokens without firing that make a latent dead (AuxK, dead fraction)",
                                  kind="int", shown="an eighth of the run's tokens, at most 10M")
    checkpoint_every: int = opt(1000, "steps between checkpoints (0: only at the end and on stop)", kind="int")
    log_every: int = opt(10, "steps between progress reports", kind="int", cli=False)
    autocast: bool = opt(False, "bf16 autocast for the model pass and SAE step (CUDA)", kind="bool", cli=False)
    layer_l1: dict[int, float] = opt(None, "per-layer L1 coefficients overriding l1_coeff (preset paper)",
                                     cli=False, default_factory=dict)
    layer_d_sae: dict[int, int] = opt(None, "per-layer widths overriding d_sae (preset paper)", cli=False,
                                      default_factory=dict)
    model_name: str = opt("", "model the activations come from", cli=False)
    corpus: str = opt("", "corpus the token rows come from", cli=False)
    activations: str = opt("", "train from an activation cache written by `attnscope cache` (no model pass)",
                           kind="str", cli=False)
    data_shards: int | None = opt(
        None, "lanes the data stream is split into, each with its own rows, model pass and shuffle buffer; fixed "
        "for the run, a resume may use any process count dividing it (sae.engine.training.distributed)", kind="int",
        shown="the number of processes")
    world_size: int = opt(1, "processes of the (last session of the) run; batch_size is the global batch",
                          cli=False)

    def __post_init__(self) -> None:
        if self.architecture not in TRAINABLE:
            raise TrainingError(f"architecture must be one of {', '.join(TRAINABLE)} (got {self.architecture!r})")
        if not self.layers:
            raise TrainingError("layers names no layer")
        self.layers = sorted(set(int(x) for x in self.layers))
        self.layer_l1 = {int(a): float(b) for a, b in (self.layer_l1 or {}).items()}
        self.layer_d_sae = {int(a): int(b) for a, b in (self.layer_d_sae or {}).items()}
        if self.total_tokens <= 0:
            raise TrainingError(f"total_tokens must be positive (got {self.total_tokens})")
        if self.total_tokens < self.batch_size:
            raise TrainingError(f"total_tokens ({self.total_tokens}) is less than one batch of {self.batch_size}")
        for name in ("expansion", "batch_size", "context_size", "rows_per_pass", "buffer_batches", "resample_sample"):
            if getattr(self, name) <= 0:
                raise TrainingError(f"{name} must be positive (got {getattr(self, name)})")
        for name in ("d_sae", "dead_tokens", "aux_k", "data_shards"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise TrainingError(f"{name} must be positive (got {v})")
        for name in ("warmup_steps", "checkpoint_every", "resample_every", "resample_window", "max_resamples",
                     "log_every", "prefetch"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise TrainingError(f"{name} must be >= 0 (got {v})")
        if self.context_size < 2:
            raise TrainingError(f"context_size must be at least 2 (BOS plus one token), got {self.context_size}")
        if self.buffer_batches < 2:
            raise TrainingError("buffer_batches must be at least 2 (half is refilled when half is consumed)")
        if self.normalize_activations not in NORMALIZATIONS:
            raise TrainingError(f"normalize_activations must be one of {', '.join(NORMALIZATIONS)} "
                                f"(got {self.normalize_activations!r})")
        if self.decoder_norm is None:
            self.decoder_norm = self.arch.decoder_norm
        if self.b_dec_init not in ("auto", "mean", "zeros"):
            raise TrainingError(f"b_dec_init must be auto, mean or zeros (got {self.b_dec_init!r})")
        if self.decoder_norm not in DECODER_NORMS:
            raise TrainingError(f"decoder_norm must be one of {', '.join(DECODER_NORMS)} (got {self.decoder_norm!r})")
        if not math.isfinite(self.decoder_init_norm) or self.decoder_init_norm <= 0:
            raise TrainingError(f"decoder_init_norm must be a positive number (got {self.decoder_init_norm})")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise TrainingError(f"lr must be a positive number (got {self.lr})")
        if not math.isfinite(self.aux_coeff) or self.aux_coeff < 0:
            raise TrainingError(f"aux_coeff must be a number >= 0 (got {self.aux_coeff})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise TrainingError(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        ks = self.k if isinstance(self.k, list) else [self.k]
        l1s = self.l1_coeff if isinstance(self.l1_coeff, list) else [self.l1_coeff]
        if not ks or not l1s:
            raise TrainingError("k and l1_coeff need at least one value")
        for v in ks:
            if int(v) != v or v <= 0:
                raise TrainingError(f"k must be a whole number > 0 (got {v})")
        for v in [*l1s, *self.layer_l1.values()]:
            if not math.isfinite(v) or v < 0:
                raise TrainingError(f"l1_coeff must be a number >= 0 (got {v})")
        if len(set(ks)) != len(ks) or len(set(l1s)) != len(l1s):
            raise TrainingError("a sweep lists each value once")
        for v in self.sweep_values:
            for layer in self.layers:
                width = self.layer_d_sae.get(layer, self.d_sae)
                problem = self.arch.sparsity_error(v, width) if width is not None else None
                if problem:
                    raise TrainingError(problem)
        if self.layer_l1 and isinstance(self.l1_coeff, list) and len(self.l1_coeff) > 1:
            raise TrainingError("layer_l1 and an l1_coeff sweep do not combine")

    # ---- derived ----------------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def arch(self) -> type[Architecture]:
        """The architecture's class in the registry: its step and its training defaults."""
        return REGISTRY[self.architecture]

    @property
    def sparsity_param(self) -> str:
        return self.arch.sparsity_param

    @property
    def sweep_values(self) -> list[float]:
        """The values of the architecture's sparsity parameter (one SAE per layer and value)."""
        v = getattr(self, self.sparsity_param)
        return list(v) if isinstance(v, list) else [v]

    @property
    def is_sweep(self) -> bool:
        return len(self.sweep_values) > 1

    def width(self, layer: int, d_in: int) -> int:
        return int(self.layer_d_sae.get(layer) or self.d_sae or self.expansion * d_in)

    def l1_for(self, layer: int, value: float) -> float:
        """The L1 coefficient of one layer's SAE at sweep value `value` (a `layer_l1` entry wins)."""
        return float(self.layer_l1.get(layer, value))

    def sparsity_for(self, layer: int, value: float) -> float:
        """The sparsity value one layer's SAE trains with at sweep value `value`: `value`, or the layer's
        `layer_l1` entry when the sparsity parameter is the L1 coefficient."""
        return self.l1_for(layer, value) if self.sparsity_param == "l1_coeff" else float(value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = dict(d)
        if "dead_window_steps" in d and "dead_tokens" not in d:  # configs written before dead_tokens
            d["dead_tokens"] = int(d["dead_window_steps"]) * int(d.get("batch_size", 4096))
        d.setdefault("decoder_norm", "unit")  # configs written before decoder_norm trained with unit rows
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE_CHANGES = ("total_tokens", "checkpoint_every", "log_every", "world_size", "prefetch")


def option_fields() -> list:
    """The `TrainConfig` fields exposed as options (CLI flags, form fields), in declaration order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("cli", True) and f.metadata.get("help")]


def field_default(name: str) -> Any:
    f = next(f for f in fields(TrainConfig) if f.name == name)
    if f.default is not MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


# ---- presets -------------------------------------------------------------------------------------------------

# The paper's GPT-2 Small recipe (Kissane et al. 2024; see PAPER.md): standard ReLU SAEs on raw hook_z, width
# 24576 (32 x 768) except layers 5 and 7 (49152), per-layer L1, lr 1.2e-3, Adam (0.9, 0.99), 1000 warm-up steps
# re-warmed after each resample, resampling every 25k steps at most 4 times (dead = frequency <= 1e-6 over the last
# 12.5k steps), 2e9 tokens in batches of 4096, context 128, a 384-batch shuffle buffer, bf16 autocast.
PAPER_L1 = (1.8, 0.8, 1.0, 0.9, 1.1, 1.0, 1.1, 1.1, 1.3, 1.2, 1.3, 3.0)
PAPER_L0 = (3, 23, 16, 15, 14, 17, 17, 19, 23, 23, 14, 9.4)  # reported, approximate
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "architecture": "standard",
        "normalize_activations": "none",
        "decoder_norm": "unit",
        "d_sae": 24576,
        "layer_d_sae": {5: 49152, 7: 49152},
        "layer_l1": dict(enumerate(PAPER_L1)),
        "l1_coeff": 1.0,
        "lr": 1.2e-3,
        "beta1": 0.9,
        "beta2": 0.99,
        "warmup_steps": 1000,
        "resample_every": 25_000,
        "resample_window": 12_500,
        "max_resamples": 4,
        "dead_threshold": 1e-6,
        "total_tokens": 2_000_000_000,
        "batch_size": 4096,
        "context_size": 128,
        "buffer_batches": 384,
        "autocast": True,
        "checkpoint_every": 5000,
    },
}


def paper_table() -> str:
    """The paper's per-layer recipe and reported L0 as a plain-text table (for --help and docs)."""
    head = "layer  width  L1    reported L0"
    lines = [head]
    for layer, (l1, l0) in enumerate(zip(PAPER_L1, PAPER_L0)):
        width = PRESETS["paper"]["layer_d_sae"].get(layer, PRESETS["paper"]["d_sae"])
        lines.append(f"{layer:>5}  {width:>5}  {l1:<4}  {l0:>5}")
    return "\n".join(lines)
