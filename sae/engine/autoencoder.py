"""The sparse autoencoder module: `standard` (ReLU), `topk` and `jumprelu` architectures.

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



# SAELens 6's normalize_activations modes. `expected_average_only_in` is a training-time scaling that SAELens folds
# into the weights before saving (and `load_from_disk` treats as identity); the two run-time modes act on every
# input row, as SAELens's `run_time_activation_norm_fn_in/out` do.
NORMALIZE_MODES = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")

# ---- architectures: one class each, in a registry --------------------------------------------------------------


class Architecture:
    """What distinguishes one SAE architecture from another: its activation function, how it is initialised and
    (when trainable) its training loss. Pure functions of tensors; the shapes are in each signature."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    sparsity_param: ClassVar[str] = ""  # the TrainConfig field that sets its sparsity ("l1_coeff", "k")

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        """`pre [..., d_sae]` -> feature activations `[..., d_sae]`."""
        raise NotImplementedError

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


class Standard(Architecture):
    """ReLU SAE trained with an L1 penalty (the paper's recipe)."""

    name = "standard"
    trainable = True
    sparsity_param = "l1_coeff"

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        return torch.relu(pre)


class TopK(Architecture):
    """Keeps the k largest pre-activations (ReLU of them), zeroes the rest (Gao et al. 2024)."""

    name = "topk"
    trainable = True
    sparsity_param = "k"

    @staticmethod
    def activation(pre: torch.Tensor, cfg: "SAEConfig", threshold: torch.Tensor | None) -> torch.Tensor:
        vals, idx = pre.topk(int(cfg.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

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


class JumpReLU(Architecture):
    """`f = relu(pre) * (pre > threshold)`, as Gemma Scope writes it (never negative, even for a negative
    threshold); loaded, not trained here."""

    name = "jumprelu"

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
        architecture(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise ValueError(f"topk SAE needs 0 < k <= d_sae (k={self.k}, d_sae={self.d_sae})")
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
        if cfg.architecture == "jumprelu":
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
