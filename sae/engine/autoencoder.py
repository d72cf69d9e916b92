"""The sparse autoencoder module: `standard` (ReLU), `topk` and `jumprelu` architectures, in a registry.

Each architecture is a class in `REGISTRY` holding everything that differs between architectures: its activation
function, its init, what its config must satisfy, and (when trainable) its training step (loss and gradients,
hand-written in fp32 and by autograd under autocast, returning a `StepOutput`; the kernels are in
`sae.engine.training.steps`) and its training defaults (decoder-norm handling, whether dead latents are resampled or
fed to AuxK, where b_dec starts). Code elsewhere asks the registry (`sae.arch`, `TrainConfig.arch`) rather than
comparing architecture names.

Shapes: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc [d_sae]`, `b_dec [d_in]`, `threshold [d_sae]`
(jumprelu only). Inputs are flattened hook_z activations `[..., d_in]` with `d_in = n_heads * d_head`
(head-major); `[..., n_heads, d_head]` is accepted and flattened.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from sae.engine.selection import topk_acts
from sae.engine.training.steps import (
    StepOutput,
    StepSettings,
    autograd_step,
    hand_written_step,
    standard_loss,
    standard_step_grads,
    topk_aux_loss,
    topk_step_grads,
)


# SAELens 6's normalize_activations modes. `expected_average_only_in` is a training-time scaling that SAELens folds
# into the weights before saving (and `load_from_disk` treats as identity); the two run-time modes act on every
# input row, as SAELens's `run_time_activation_norm_fn_in/out` do.
NORMALIZE_MODES = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")

# ---- architectures: one class each, in a registry --------------------------------------------------------------


class Architecture:
    """What distinguishes one SAE architecture from another: its activation function, its init, its config's
    constraints and (when trainable) its training step and defaults. Pure functions of tensors; the shapes are in
    each signature."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    sparsity_param: ClassVar[str] = ""  # the TrainConfig field that sets its sparsity ("l1_coeff", "k")
    has_threshold: ClassVar[bool] = False  # a `threshold [d_sae]` parameter
    # training defaults
    decoder_norm: ClassVar[str] = "unit"  # "unit" or "rescale" (sae.engine.training.steps)
    resamples: ClassVar[bool] = False  # dead latents revived by Anthropic-style resampling
    uses_dead_latents: ClassVar[bool] = False  # dead latents fed to an auxiliary loss (AuxK)
    sparsity_metric: ClassVar[str] = "sparsity_loss"  # the progress metric of its unweighted sparsity term

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        """`pre [..., d_sae]` -> feature activations `[..., d_sae]`."""
        raise NotImplementedError

    @classmethod
    def activation_(cls, pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        """`activation` for a caller that no longer needs `pre [N, d_sae]`: may overwrite it, may be faster."""
        return cls.activation(pre, cfg, threshold)

    @staticmethod
    def init(sae: "SAE") -> None:
        """Initial weights; the default is the paper's (independent Kaiming-uniform W_enc and W_dec, decoder rows at
        unit norm, zero biases)."""
        nn.init.kaiming_uniform_(sae.W_enc, a=math.sqrt(5))
        nn.init.kaiming_uniform_(sae.W_dec, a=math.sqrt(5))
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            sae.b_enc.zero_()
            sae.b_dec.zero_()

    @staticmethod
    def check_config(cfg: "SAEConfig") -> None:
        """ValueError when `cfg` cannot describe an SAE of this architecture."""

    @staticmethod
    def config_fields(sparsity: float) -> dict[str, Any]:
        """The `SAEConfig` fields a training sparsity value sets (top-k: `k`)."""
        return {}

    @staticmethod
    def sparsity_error(sparsity: float, d_sae: int) -> str | None:
        """Why `sparsity` cannot train an SAE `d_sae` wide (None: it can)."""
        return None

    @staticmethod
    def b_dec_starts_at_mean(mean_share: float) -> bool:
        """`b_dec_init="auto"`: whether b_dec starts at the mean activation, given `mean_share` = |mean|^2 / E|x|^2
        of the first buffer."""
        return True

    @classmethod
    def step(cls, sae: "SAE", x: torch.Tensor, s: StepSettings, autocast: torch.dtype | None = None) -> StepOutput:
        """One training step on `x [B, d_in]`: the loss and its gradients in every parameter's `.grad`. Hand-written
        in fp32 (`step_grads`), or by autograd under autocast to `autocast` (`loss`)."""
        if autocast is not None:
            return autograd_step(cls.loss, sae, x, s, autocast)
        return hand_written_step(cls.step_grads, sae, x, s)

    @staticmethod
    def step_grads(sae: "SAE", x: torch.Tensor, s: StepSettings) -> StepOutput:
        """The hand-written fp32 step of an SAE with unit decoder rows (or the effective SAE of "rescale")."""
        raise NotImplementedError

    @staticmethod
    def loss(sae: "SAE", x: torch.Tensor, pre: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor,
             s: StepSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(loss, mse, aux)` from a differentiable forward (`pre`, `f [B, d_sae]`, `x_hat [B, d_in]`)."""
        raise NotImplementedError


class Standard(Architecture):
    """ReLU SAE trained with an L1 penalty (the paper's recipe): unit decoder rows, resampling of dead features."""

    name = "standard"
    trainable = True
    sparsity_param = "l1_coeff"
    resamples = True
    # b_dec starts at the mean only when the mean carries this share of the activations' energy (see below)
    MEAN_SHARE_FOR_B_DEC: ClassVar[float] = 0.4

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        return torch.relu(pre)

    @classmethod
    def activation_(cls, pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        return pre.relu_()

    @classmethod
    def b_dec_starts_at_mean(cls, mean_share: float) -> bool:
        """Measured at 1-2M tokens: on the embedded default (shares 0.13-0.17) a mean start cost ~0.04 explained
        variance at equal L0, while on a random 256-wide GPT-2 (share 0.59) a zero start left it 97% dead at any
        L1 and a mean start gave L0 211, EV 0.84, none dead."""
        return mean_share >= cls.MEAN_SHARE_FOR_B_DEC

    @staticmethod
    def step_grads(sae: "SAE", x: torch.Tensor, s: StepSettings) -> StepOutput:
        return standard_step_grads(sae, x, s.sparsity)

    @staticmethod
    def loss(sae: "SAE", x: torch.Tensor, pre: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor,
             s: StepSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return standard_loss(x, f.float(), x_hat.float(), s.sparsity)


class TopK(Architecture):
    """Keeps the k largest pre-activations (ReLU of them), zeroes the rest (Gao et al. 2024). Trained with AuxK on
    dead latents and (SAELens's default) decoder rows rescaled rather than held at unit norm."""

    name = "topk"
    trainable = True
    sparsity_param = "k"
    decoder_norm = "rescale"
    uses_dead_latents = True
    sparsity_metric = "aux_loss"

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        vals, idx = pre.topk(int(cfg.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    @classmethod
    def activation_(cls, pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        if pre.device.type == "cpu" and pre.dim() == 2:
            return topk_acts(pre, int(cfg.k))
        return cls.activation(pre, cfg, threshold)

    @staticmethod
    def init(sae: "SAE") -> None:
        """Gao et al.: decoder rows random at unit norm, the encoder their transpose, zero biases. Every latent
        then starts able to fire on the direction it writes, so fewer die in the first steps."""
        nn.init.kaiming_uniform_(sae.W_dec, a=math.sqrt(5))
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.zero_()
            sae.b_dec.zero_()

    @staticmethod
    def check_config(cfg: "SAEConfig") -> None:
        if not (cfg.k and 0 < cfg.k <= cfg.d_sae):
            raise ValueError(f"topk SAE needs 0 < k <= d_sae (k={cfg.k}, d_sae={cfg.d_sae})")

    @staticmethod
    def config_fields(sparsity: float) -> dict[str, Any]:
        return {"k": int(sparsity)}

    @staticmethod
    def sparsity_error(sparsity: float, d_sae: int) -> str | None:
        return f"k must be in 1..{d_sae} (got {sparsity})" if sparsity > d_sae else None

    @staticmethod
    def step_grads(sae: "SAE", x: torch.Tensor, s: StepSettings) -> StepOutput:
        return topk_step_grads(sae, x, int(s.sparsity), s.dead, s.aux_k, s.aux_coeff)

    @staticmethod
    def loss(sae: "SAE", x: torch.Tensor, pre: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor,
             s: StepSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mse = (x_hat.float() - x).pow(2).sum(-1).mean()
        aux = (topk_aux_loss(sae, x, pre.float(), x_hat.float(), s.dead, s.aux_k, s.decoder_norm)
               if s.dead is not None else mse.new_zeros(()))
        return mse + s.aux_coeff * aux, mse, aux


class JumpReLU(Architecture):
    """`f = relu(pre) * (pre > threshold)`, as Gemma Scope writes it (never negative, even for a negative
    threshold); loaded, not trained here."""

    name = "jumprelu"
    has_threshold = True

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        return torch.relu(pre) * (pre > threshold).to(pre.dtype)


REGISTRY: dict[str, type[Architecture]] = {a.name: a for a in (Standard, TopK, JumpReLU)}
ARCHITECTURES = tuple(REGISTRY)
TRAINABLE = tuple(name for name, a in REGISTRY.items() if a.trainable)


def architecture(name: str) -> type[Architecture]:
    """The registered class for `name`; ValueError naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r}; expected one of {ARCHITECTURES}") from None


@dataclass
class SAEConfig:
    """What an SAE is and where it reads from; saved as `cfg.json` (SAELens keys) beside the weights."""

    d_in: int
    d_sae: int
    hook_name: str
    architecture: str = "standard"
    model_name: str = ""
    k: int | None = None  # topk only
    n_heads: int | None = None  # lets W_enc / W_dec be split per head; d_in == n_heads * d_head
    context_size: int = 128
    prepend_bos: bool = True
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # training hyperparameters, eval metrics, provenance

    def __post_init__(self) -> None:
        arch = architecture(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")
        arch.check_config(self)
        if self.normalize_activations not in NORMALIZE_MODES:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported; attnscope applies "
                f"{', '.join(NORMALIZE_MODES)} exactly as SAELens does"
            )
        if self.n_heads is not None and self.d_in % self.n_heads:
            raise ValueError(f"d_in={self.d_in} is not divisible by n_heads={self.n_heads}")

    @property
    def layer(self) -> int:
        from sae.engine.models import layer_of_hook

        return layer_of_hook(self.hook_name)

    @property
    def d_head(self) -> int | None:
        return self.d_in // self.n_heads if self.n_heads else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in d.items() if k not in names})
        return cls(**known, extra=extra)


class SAE(nn.Module):
    """x_cent = x - b_dec; pre = x_cent @ W_enc + b_enc; f = act(pre); x_hat = f @ W_dec + b_dec."""

    def __init__(self, cfg: SAEConfig, init: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if REGISTRY[cfg.architecture].has_threshold:
            self.threshold = nn.Parameter(torch.zeros(d_sae))
        else:
            self.threshold = None
        if init:
            self.reset_parameters()

    @property
    def arch(self) -> type[Architecture]:
        return REGISTRY[self.cfg.architecture]

    def reset_parameters(self) -> None:
        """The architecture's init (`Architecture.init`)."""
        self.arch.init(self)

    # ---- shapes ---------------------------------------------------------------------------------------

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in]` stays; `[..., n_heads, d_head]` is flattened head-major. Anything else is an error."""
        if x.shape[-1] == self.cfg.d_in:
            return x
        if x.dim() >= 2 and x.shape[-2] * x.shape[-1] == self.cfg.d_in:
            return x.flatten(-2)
        raise ValueError(f"activations of shape {tuple(x.shape)} do not fit an SAE with d_in={self.cfg.d_in}")

    # ---- run-time activation normalisation (SAELens's normalize_activations) -------------------------------

    def normalize_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """`x [..., d_in]` as the encoder sees it, and the per-row statistics `normalize_out` needs.

        `constant_norm_rescale`: `x * sqrt(d_in) / |x|`; `layer_norm`: `(x - mean) / (std + 1e-5)` with the
        Bessel-corrected std (torch's default), as SAELens computes them, before `b_dec` is subtracted.
        """
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff, torch.zeros_like(coeff))
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + 1e-5), (1.0 / std, mu)
        return x, None

    @staticmethod
    def normalize_out(y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Undo `normalize_in` on a reconstruction: `y / coeff + shift` (SAELens: `y / coeff`, `y * std + mu`)."""
        if stats is None:
            return y
        inv, shift = stats
        return y / inv + shift

    # ---- forward --------------------------------------------------------------------------------------

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations `[..., d_sae]`."""
        x = self.flatten_input(x).to(self.W_enc.dtype)
        x, _ = self.normalize_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """`pre [..., d_sae]` -> `f [..., d_sae]` by the architecture's activation function."""
        return self.arch.activation(pre, self.cfg, self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations `[..., d_sae]`."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction `[..., d_in]` in the encoder's (normalised) space; `forward` / `encode_and_reconstruct`
        also undo a run-time normalisation, which needs the input row."""
        return f @ self.W_dec + self.b_dec

    def encode_and_reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `[..., d_sae]` and the reconstruction `[..., d_in]` of `x`, in x's own scale."""
        x = self.flatten_input(x).to(self.W_enc.dtype)
        xn, stats = self.normalize_in(x)
        if self.cfg.apply_b_dec_to_input:
            xn = xn - self.b_dec
        f = self.activation(xn @ self.W_enc + self.b_enc)
        return f, self.normalize_out(self.decode(f), stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_and_reconstruct(x)[1]

    @property
    def is_linear_in_z(self) -> bool:
        """Whether pre-activations are an affine function of z (false under a run-time normalisation), which
        direct feature attribution needs."""
        return self.cfg.normalize_activations not in RUNTIME_NORMS

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> None:
        """Fold a training-time input scale `s` into the weights the way SAELens does for `expected_average_only_in`
        (`fold_activation_norm_scaling_factor`): `W_enc *= s`, `W_dec /= s`, `b_dec /= s`, so encode(x) equals the
        unfolded encode(s x) and the reconstruction is the unfolded one divided by s. Used to read SAELens
        checkpoints exactly as SAELens would; attnscope's own trainer folds with `fold_input_scale`, which keeps
        decoder rows at unit norm and puts activations in raw-z units instead (same reconstruction)."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
        self.cfg.normalize_activations = "none"

    # ---- helpers used by analyses ---------------------------------------------------------------------

    @property
    def encoder_bias_total(self) -> torch.Tensor:
        """`[d_sae]`: the part of every pre-activation that no head contributes, `b_enc - b_dec @ W_enc`."""
        if self.cfg.apply_b_dec_to_input:
            return self.b_enc - self.b_dec @ self.W_enc
        return self.b_enc

    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def fold_decoder_norm(sae: SAE) -> SAE:
    """Fold decoder row norms into the encoder (in place; returns it), as SAELens's `fold_W_dec_norm` does:
    `W_enc *= n`, `b_enc *= n`, `W_dec /= n` with `n = |W_dec_i|`. An SAE whose activations are scaled by its row
    norms (`rescale_acts_by_decoder_norm`: SAELens checkpoints, attnscope's "rescale" training) then computes the
    same features and reconstruction as a plain SAE with unit rows. Raises ValueError for a zero-norm row."""
    n = sae.W_dec.norm(dim=-1)  # [d_sae]
    if not torch.all(n > 0):
        raise ValueError("a decoder row has zero norm; its norm cannot be folded")
    sae.W_enc.mul_(n)
    sae.b_enc.mul_(n)
    sae.W_dec.div_(n.unsqueeze(-1))
    return sae


@torch.no_grad()
def fold_input_scale(sae: SAE, scale: float) -> SAE:
    """Make an SAE trained on `scale * x` read raw `x` (in place; returns it).

    With `s = scale > 0`: the trained SAE gives `pre = (s x - b_dec) W_enc + b_enc` and `x_hat_scaled`. Dividing
    `b_enc`, `b_dec` (and a JumpReLU threshold) by `s` gives `pre' = pre / s`, so the same latents are selected
    (ReLU and top-k commute with a positive scale), `f' = f / s`, and `x_hat' = f' W_dec + b_dec / s =
    x_hat_scaled / s`: the reconstruction in raw units, with the decoder rows untouched (still unit norm) and
    each activation equal to its latent's contribution in raw z. `normalize_activations` becomes "none".
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"activation scale must be a positive number, got {scale}")
    if scale != 1.0:
        sae.b_enc.div_(scale)
        sae.b_dec.div_(scale)
        if sae.threshold is not None:
            sae.threshold.div_(scale)
    sae.cfg.normalize_activations = "none"
    return sae
