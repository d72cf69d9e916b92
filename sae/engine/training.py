"""Training attention-output SAEs on hook_z with the paper's recipe, many layers from one model pass.

The recipe (Kissane et al. 2024, see PAPER.md): `standard` SAEs with a pre-encoder `b_dec`, ReLU, loss = squared
error summed over d_in and averaged over the batch + `l1_coeff * sum_i f_i` (no decoder-norm weighting), decoder
rows kept at unit norm (gradient component parallel to each row removed before the step, rows renormalised
after), Adam (0.9, 0.99), linear LR warm-up (re-warmed after each resample) and Anthropic-style resampling of dead
features. `topk` keeps the k largest pre-activations and adds an auxiliary loss that asks the dead latents to
reconstruct the residual.

Activations are attnscope's hook_z: value bias removed, i.e. the z that HookedTransformer gives with value biases
folded into b_O, which is what the paper's released SAEs were trained on.

`train_saes(model, token_rows, cfg, out_dir)` is the entry point for Python callers (the CLI, the workbench's
training screen in a worker thread); `on_progress(dict)` reports, `cancel` (a `threading.Event`) stops a run
between steps with a checkpoint written.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from sae.engine.activations import ActivationBuffer, ZSource, rows_digest
from sae.engine.errors import AttnscopeError
from sae.engine.formats import save_sae
from sae.engine.models import z_hook_name
from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.jobs import CancelToken
from sae.engine.safe_io import DirLock, UnsafeFileError, atomic_write_text, atomic_write_with, clean_stale_temps, safe_torch_load

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "train_config.json"
ProgressFn = Callable[[dict[str, Any]], None]


class TrainingError(AttnscopeError):
    """Training could not start or had to stop; the message is one line meant for the user."""


class TrainingDiverged(TrainingError):
    """The loss became NaN/inf. The last good checkpoint (if any) is kept untouched."""


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as `train_config.json` beside the outputs."""

    layers: list[int]
    architecture: str = "standard"
    d_sae: int = 2048
    l1_coeff: float = 1.0  # standard
    k: int = 32  # topk
    aux_k: int | None = None  # topk: dead latents used by the auxiliary loss (default d_in // 2)
    aux_coeff: float = 1 / 32  # topk
    lr: float = 1.2e-3
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 1000
    total_tokens: int = 2_000_000
    batch_size: int = 4096
    context_size: int = 128
    rows_per_pass: int = 32  # token rows per model forward pass
    buffer_batches: int = 16  # shuffle-buffer capacity, in SAE batches
    seed: int = 0
    # Anthropic-style resampling (standard only)
    resample_every: int = 25_000
    resample_window: int = 12_500
    max_resamples: int = 4
    dead_threshold: float = 1e-6  # firing frequency at or below which a feature is dead when resampling
    resample_sample: int = 8192  # inputs scored when choosing revival directions
    dead_window_steps: int = 1000  # steps without firing that count as dead (progress, topk aux loss)
    checkpoint_every: int = 1000  # steps; 0 = only at the end and on interrupt
    log_every: int = 10
    autocast: bool = False  # bf16 autocast for the model pass and SAE step (CUDA)
    model_name: str = ""
    corpus: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ("standard", "topk"):
            raise TrainingError(f"cannot train architecture {self.architecture!r}: choose standard or topk")
        if not self.layers:
            raise TrainingError("no layers to train")
        if self.total_tokens <= 0:
            raise TrainingError(f"--tokens must be positive (got {self.total_tokens})")
        if self.total_tokens < self.batch_size:
            raise TrainingError(f"--tokens {self.total_tokens} is less than one batch of {self.batch_size}")
        for name in ("d_sae", "batch_size", "context_size", "rows_per_pass", "buffer_batches"):
            if getattr(self, name) <= 0:
                raise TrainingError(f"{name} must be positive (got {getattr(self, name)})")
        for name in ("warmup_steps", "checkpoint_every", "resample_every", "resample_window", "max_resamples",
                     "log_every", "dead_window_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                flag = "--" + name.replace("_", "-")
                raise TrainingError(f"{flag} must be a whole number >= 0 (got {value!r})")
        if self.context_size < 2:
            raise TrainingError(f"--context-size must be at least 2 (BOS plus one token), got {self.context_size}")
        if self.buffer_batches < 2:
            raise TrainingError("buffer_batches must be at least 2 (half is refilled when half is consumed)")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise TrainingError(f"--k must be in 1..{self.d_sae} (got {self.k})")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise TrainingError(f"--lr must be a positive number (got {self.lr})")
        self.layers = sorted(set(int(x) for x in self.layers))

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: Path) -> None:
        _atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE_CHANGES = ("total_tokens", "checkpoint_every", "log_every")


# ---- the maths of one step ----------------------------------------------------------------------------------


def sae_forward_train(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable forward for training: `(pre, f, x_hat)`, `[B, d_sae]`, `[B, d_sae]`, `[B, d_in]`.

    Same maths as `SAE.forward` (x - b_dec before the encoder) written as
    `pre = x @ W_enc + (b_enc - b_dec @ W_enc)`, so the backward pass needs no `[B, d_in]` gradient of the
    centred input: five big matmuls per step instead of six.
    """
    if sae.cfg.apply_b_dec_to_input:
        bias = sae.b_enc - sae.b_dec @ sae.W_enc
    else:
        bias = sae.b_enc
    pre = torch.addmm(bias, x, sae.W_enc)
    if sae.cfg.architecture == "topk":
        vals, idx = pre.topk(int(sae.cfg.k), dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    else:
        f = torch.relu(pre)
    x_hat = torch.addmm(sae.b_dec, f, sae.W_dec)
    return pre, f, x_hat


def standard_loss(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, l1_coeff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, mse, l1)`: mse = sum over d_in of (x_hat - x)^2, mean over batch; l1 = mean over batch of sum_i |f_i|."""
    mse = (x_hat - x).pow(2).sum(-1).mean()
    l1 = f.abs().sum(-1).mean()
    return mse + l1_coeff * l1, mse, l1


@torch.no_grad()
def standard_step_grads(sae: SAE, x: torch.Tensor, l1_coeff: float) -> dict[str, torch.Tensor]:
    """The standard SAE's loss and gradients written out by hand (fp32), filling `.grad` of every parameter.

    Same loss as `standard_loss` on `sae_forward_train`, but without autograd's bookkeeping: five matmuls and
    four passes over the `[B, d_sae]` activations. Returns `{"loss", "mse", "l1", "f", "x_hat"}` (detached).
    Shapes: x `[B, d_in]`, f `[B, d_sae]`, x_hat `[B, d_in]`.
    """
    n = x.shape[0]
    W_enc, W_dec, b_enc, b_dec = sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec
    bias = b_enc - b_dec @ W_enc if sae.cfg.apply_b_dec_to_input else b_enc
    f = torch.addmm(bias, x, W_enc).relu_()  # [B, d_sae]
    x_hat = torch.addmm(b_dec, f, W_dec)  # [B, d_in]
    err = x_hat - x
    mse = err.pow(2).sum() / n
    l1 = f.sum() / n  # f >= 0, so |f| = f
    d_xhat = err.mul_(2.0 / n)  # d loss / d x_hat
    g_W_dec = f.T @ d_xhat
    g_b_dec = d_xhat.sum(0)
    # d loss / d pre = (d_xhat @ W_dec^T + l1/n) where pre > 0, else 0
    d_pre = torch.addmm(d_xhat.new_full((1,), l1_coeff / n), d_xhat, W_dec.T).mul_(f > 0)
    g_W_enc = x.T @ d_pre
    g_b_enc = d_pre.sum(0)
    if sae.cfg.apply_b_dec_to_input:  # pre = (x - b_dec) @ W_enc + b_enc
        g_W_enc.addr_(b_dec, g_b_enc, alpha=-1.0)
        g_b_dec -= W_enc @ g_b_enc
    for p, g in ((W_enc, g_W_enc), (W_dec, g_W_dec), (b_enc, g_b_enc), (b_dec, g_b_dec)):
        p.grad = g
    return {"loss": mse + l1_coeff * l1, "mse": mse, "l1": l1, "f": f, "x_hat": x_hat}


def topk_aux_loss(
    sae: SAE, x: torch.Tensor, pre: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """Dead latents' reconstruction of the residual: the `aux_k` largest dead pre-activations (ReLU) decode
    `x - x_hat` (detached); summed squared error over d_in, mean over batch. Zero when nothing is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    kk = min(aux_k, n_dead)
    masked = pre.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(kk, dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    resid = (x - x_hat).detach()
    return (f_aux @ sae.W_dec - resid).pow(2).sum(-1).mean()


@torch.no_grad()
def remove_parallel_grad(sae: SAE) -> None:
    """Remove from each decoder row's gradient its component along that (unit-norm) row."""
    g, w = sae.W_dec.grad, sae.W_dec
    if g is not None:
        g.sub_((g * w).sum(-1, keepdim=True) * w)


def lr_at(step: int, base_lr: float, warmup_steps: int, last_resample_step: int) -> float:
    """Linear warm-up from the run's start and again after each resample."""
    if warmup_steps <= 0:
        return base_lr
    since = step - max(last_resample_step, 0)
    return base_lr * min(1.0, (since + 1) / warmup_steps)


@torch.no_grad()
def resample_dead(
    sae: SAE, opt: torch.optim.Optimizer, dead: torch.Tensor, inputs: torch.Tensor, generator: torch.Generator
) -> int:
    """Anthropic-style resampling of the `dead [d_sae]` features from `inputs [n, d_in]`.

    Each dead feature gets an input sampled with probability proportional to the square of its squared
    reconstruction error: decoder row = normalised (x - b_dec), encoder column = the same direction scaled to
    0.2 x the mean alive encoder norm, b_enc = 0, and the Adam moments of those parameters are reset.
    Returns the number of features resampled.
    """
    idx = dead.nonzero().flatten()
    n = idx.numel()
    if n == 0:
        return 0
    x_hat = sae.forward(inputs)
    err = (x_hat - inputs).pow(2).sum(-1)
    p = err.pow(2)
    if not torch.isfinite(p).all() or p.sum() <= 0:
        p = torch.ones_like(p)
    pick = torch.multinomial(p.cpu().double(), n, replacement=n > p.numel(), generator=generator).to(inputs.device)
    dirs = inputs[pick] - sae.b_dec
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    sae.W_enc[:, idx] = (dirs * 0.2 * enc_norm).T
    sae.b_enc[idx] = 0.0
    for param, sel in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sel] = 0.0
    return n


def init_sae(model, layer: int, cfg: TrainConfig, device: torch.device) -> SAE:
    """A fresh SAE for one layer, seeded from (seed, layer) so every layer's init is reproducible on its own."""
    scfg = SAEConfig(
        d_in=model.d_z,
        d_sae=cfg.d_sae,
        hook_name=z_hook_name(layer),
        architecture=cfg.architecture,
        model_name=model.name,
        k=cfg.k if cfg.architecture == "topk" else None,
        n_heads=model.n_heads,
        context_size=cfg.context_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1009 + layer)
        sae = SAE(scfg)
    return sae.to(device)


def make_optimizer(sae: SAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    try:
        return torch.optim.Adam(sae.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(sae.parameters(), foreach=True, **kwargs)


# ---- per-layer state ----------------------------------------------------------------------------------------


@dataclass
class LayerState:
    """One layer's SAE, optimizer and feature-firing trackers."""

    sae: SAE
    opt: torch.optim.Optimizer
    steps_since_fired: torch.Tensor  # [d_sae] long
    window_fired: torch.Tensor  # [d_sae] float: firings in the current resampling window
    window_tokens: int = 0
    total_fired: torch.Tensor | None = None  # [d_sae] float: firings over the whole run (for sparsity)
    total_tokens: int = 0
    n_resamples: int = 0
    last_resample_step: int = 0
    last: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "steps_since_fired": self.steps_since_fired,
            "window_fired": self.window_fired,
            "window_tokens": self.window_tokens,
            "total_fired": self.total_fired,
            "total_tokens": self.total_tokens,
            "n_resamples": self.n_resamples,
            "last_resample_step": self.last_resample_step,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.sae.load_state_dict(s["sae"])
        self.opt.load_state_dict(s["opt"])
        self.steps_since_fired.copy_(s["steps_since_fired"])
        self.window_fired.copy_(s["window_fired"])
        self.window_tokens = int(s["window_tokens"])
        self.total_fired.copy_(s["total_fired"])
        self.total_tokens = int(s["total_tokens"])
        self.n_resamples = int(s["n_resamples"])
        self.last_resample_step = int(s["last_resample_step"])


# ---- files ----------------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temporary file renamed into place: a checkpoint is either whole or absent; a full
    disk is a one-line OutputError with the previous checkpoint untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: torch.save(state, str(tmp)))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's tensors and plain values (weights only: nothing in it is executed)."""
    try:
        state = safe_torch_load(path, "checkpoint")
    except FileNotFoundError:
        raise TrainingError(f"no checkpoint to resume from at {path}") from None
    except UnsafeFileError as exc:
        raise TrainingError(str(exc)) from None
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path} does not hold a training state")
    return state


def lock_output_dir(out_dir: str | Path) -> DirLock:
    """Hold `out_dir` for one training run; a second writer gets a one-line `LockedError` at once."""
    return DirLock(Path(out_dir), what="attnscope train").acquire()


def sae_dir_name(layer: int) -> str:
    return z_hook_name(layer)


def _cancelled(cancel: Any) -> bool:
    """`cancel` is a `sae.engine.jobs.CancelToken`, a `threading.Event` or a zero-argument callable."""
    if isinstance(cancel, CancelToken):
        return cancel.cancelled
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


# ---- the trainer ---------------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    """How a run ended: 'finished', 'cancelled' or 'diverged', with the SAEs as they were saved."""

    saes: dict[int, SAE]
    status: str
    step: int
    total_steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    checkpoint: Path | None
    metrics: dict[int, dict[str, float]]
    message: str = ""


class Trainer:
    """Trains one SAE per layer in `cfg.layers` from a single model pass per chunk of token rows."""

    def __init__(
        self,
        model,
        token_rows: torch.Tensor,
        cfg: TrainConfig,
        out_dir: str | Path,
        on_progress: ProgressFn | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.on_progress = on_progress
        self.cancel = cancel if cancel is not None else threading.Event()
        self.device = torch.device(device) if device is not None else model.device
        for layer in cfg.layers:
            if not 0 <= layer < model.n_layers:
                raise TrainingError(f"layer {layer} is outside the model ({model.name} has layers 0..{model.n_layers - 1})")
        if token_rows.dim() != 2 or token_rows.shape[0] == 0:
            raise TrainingError("the corpus gave no token rows")
        if token_rows.numel() < cfg.batch_size:
            raise TrainingError(
                f"the corpus is too small for one batch: {token_rows.numel()} tokens < batch size {cfg.batch_size}"
            )
        if token_rows.shape[1] != cfg.context_size:
            raise TrainingError(f"token rows have length {token_rows.shape[1]}, config says {cfg.context_size}")
        if cfg.total_steps == 0:
            raise TrainingError(f"--tokens {cfg.total_tokens} is less than one batch of {cfg.batch_size}")
        if not cfg.model_name:
            cfg.model_name = model.name
        self.rows = token_rows
        self.digest = rows_digest(token_rows)
        autocast = torch.bfloat16 if (cfg.autocast and self.device.type == "cuda") else None
        self.autocast_dtype = autocast
        self.source = ZSource(model, token_rows, cfg.layers, cfg.rows_per_pass, cfg.seed, autocast)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.buffer = ActivationBuffer(
            self.source.next_chunk, len(cfg.layers), model.d_z, cfg.buffer_batches * cfg.batch_size,
            cfg.batch_size, self.device, torch.Generator().manual_seed(cfg.seed + 1),
        )
        self.layers: dict[int, LayerState] = {}
        for layer in cfg.layers:
            sae = init_sae(model, layer, cfg, self.device)
            d = cfg.d_sae
            self.layers[layer] = LayerState(
                sae=sae,
                opt=make_optimizer(sae, cfg),
                steps_since_fired=torch.zeros(d, dtype=torch.long, device=self.device),
                window_fired=torch.zeros(d, device=self.device),
                total_fired=torch.zeros(d, device=self.device),
            )
        self.step = 0
        self.seconds = 0.0  # training seconds of earlier sessions and up to the last checkpoint
        self._t_session: float | None = None
        self._t_rate = 0.0
        self._session_start_step = 0
        self.last_checkpoint_step: int | None = None
        self.out_lock: DirLock | None = None  # held by the caller (the CLI takes it before loading anything)

    # -- checkpoints --

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "attnscope-train-checkpoint-1",
            "cfg": self.cfg.to_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "rows_digest": self.digest,
            "layers": {str(layer): st.state_dict() for layer, st in self.layers.items()},
            "buffer": self.buffer.state_dict(),
            "source": self.source.state_dict(),
            "generator": self.generator.get_state(),
        }

    def resume(self) -> None:
        """Restore everything from `out_dir/checkpoint.pt`; the run then continues bit-for-bit."""
        state = load_checkpoint(self.checkpoint_path)
        saved = TrainConfig.from_dict(state["cfg"])
        mine = self.cfg.to_dict()
        for key, value in saved.to_dict().items():
            if key in TrainConfig.RESUMABLE_CHANGES or key in ("model_name", "corpus"):
                continue
            if mine.get(key) != value:
                raise TrainingError(f"the checkpoint was made with {key}={value!r}, this run asks for {mine.get(key)!r}")
        if state["rows_digest"] != self.digest:
            raise TrainingError("the corpus (or tokenizer / context size) differs from the one the checkpoint was made with")
        for layer, st in self.layers.items():
            st.load_state_dict(state["layers"][str(layer)])
        self.buffer.load_state_dict(state["buffer"])
        self.source.load_state_dict(state["source"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self.last_checkpoint_step = self.step

    def _all_finite(self) -> bool:
        return all(
            torch.isfinite(p).all().item() for st in self.layers.values() for p in st.sae.parameters()
        )

    def write_checkpoint(self) -> Path:
        save_checkpoint(self.checkpoint_path, self.state_dict())
        self.save_saes()
        self.last_checkpoint_step = self.step
        return self.checkpoint_path

    def save_saes(self) -> None:
        for layer, st in self.layers.items():
            sae = st.sae
            sae.cfg.extra["training"] = {
                **{k: v for k, v in self.cfg.to_dict().items() if k not in ("layers",)},
                "steps_done": self.step,
                "tokens_done": self.step * self.cfg.batch_size,
                "n_resamples": st.n_resamples,
            }
            density = st.total_fired / max(st.total_tokens, 1)
            save_sae(sae, self.out_dir / sae_dir_name(layer), torch.log10(density + 1e-10))

    # -- the loop --

    def elapsed(self) -> float:
        """Training seconds over all sessions of this run (resumes included)."""
        return self.seconds + (time.perf_counter() - self._t_session if self._t_session is not None else 0.0)

    def _session_rate(self) -> float:
        if self._t_session is None:
            return 0.0
        dt = time.perf_counter() - self._t_rate
        steps = self.step - self._session_start_step
        return steps * self.cfg.batch_size / dt if dt > 0 and steps > 0 else 0.0

    def _report(self, event: str, **extra: Any) -> None:
        if self.on_progress is None:
            return
        rate = self._session_rate()
        remaining = (self.cfg.total_steps - self.step) * self.cfg.batch_size
        info = {
            "event": event,
            "step": self.step,
            "total_steps": self.cfg.total_steps,
            "tokens": self.step * self.cfg.batch_size,
            "total_tokens": self.cfg.total_steps * self.cfg.batch_size,
            "tokens_per_s": rate,
            "eta_s": remaining / rate if rate > 0 else None,
            "elapsed_s": self.elapsed(),
            "layers": {layer: dict(st.last) for layer, st in self.layers.items()},
        }
        info.update(extra)
        try:
            self.on_progress(info)
        except Exception:  # noqa: BLE001 - a broken display must not kill a long run
            pass

    def _train_layer(self, layer: int, st: LayerState, x: torch.Tensor, log: bool) -> torch.Tensor:
        cfg = self.cfg
        sae = st.sae
        lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, st.last_resample_step if st.n_resamples else 0)
        for group in st.opt.param_groups:
            group["lr"] = lr
        st.opt.zero_grad(set_to_none=True)
        if cfg.architecture == "standard" and self.autocast_dtype is None:
            out = standard_step_grads(sae, x, cfg.l1_coeff)  # hand-written backward: the fast path
            loss, mse, aux, f, x_hat = out["loss"], out["mse"], out["l1"], out["f"], out["x_hat"]
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_dtype is not None):
                pre, f, x_hat = sae_forward_train(sae, x)
                if cfg.architecture == "standard":
                    loss, mse, aux = standard_loss(x, f, x_hat.float(), cfg.l1_coeff)
                else:
                    mse = (x_hat.float() - x).pow(2).sum(-1).mean()
                    dead = st.steps_since_fired >= cfg.dead_window_steps
                    aux = topk_aux_loss(sae, x, pre, x_hat, dead, cfg.aux_k or max(1, sae.cfg.d_in // 2))
                    loss = mse + cfg.aux_coeff * aux
            loss.backward()
        remove_parallel_grad(sae)
        st.opt.step()
        sae.set_decoder_norm_to_unit()
        with torch.no_grad():
            fired = (f > 0).sum(0).float()  # [d_sae] firings in this batch
            st.steps_since_fired.add_(1).masked_fill_(fired > 0, 0)
            st.window_fired += fired
            st.window_tokens += x.shape[0]
            st.total_fired += fired
            st.total_tokens += x.shape[0]
            if log:
                err = (x_hat.float() - x).pow(2).sum()
                var = (x - x.mean(0)).pow(2).sum()
                dead_now = st.steps_since_fired >= min(cfg.dead_window_steps, self.step + 1)
                st.last = {
                    "loss": loss.item(),
                    "mse": mse.item(),
                    "sparsity_loss" if cfg.architecture == "standard" else "aux_loss": aux.item(),
                    "l0": fired.sum().item() / x.shape[0],
                    "explained_variance": 1.0 - (err / var.clamp_min(1e-12)).item(),
                    "dead_fraction": dead_now.float().mean().item(),
                    "lr": lr,
                    "n_resamples": st.n_resamples,
                }
        return loss.detach()

    def _maybe_resample(self, i: int, layer: int, st: LayerState) -> None:
        cfg = self.cfg
        if cfg.architecture != "standard" or st.n_resamples >= cfg.max_resamples or cfg.resample_every <= 0:
            return
        pos = (self.step + 1) % cfg.resample_every
        if cfg.resample_window < cfg.resample_every and pos == (cfg.resample_every - cfg.resample_window) % cfg.resample_every:
            st.window_fired.zero_()
            st.window_tokens = 0
        if pos == 0 and st.window_tokens > 0:
            freq = st.window_fired / st.window_tokens
            dead = freq <= cfg.dead_threshold
            inputs = self.buffer.sample(cfg.resample_sample, i, self.generator)
            n = resample_dead(st.sae, st.opt, dead, inputs, self.generator)
            st.n_resamples += 1
            st.last_resample_step = self.step + 1
            st.steps_since_fired[dead] = 0
            st.window_fired.zero_()
            st.window_tokens = 0
            st.last["resampled"] = n

    def run(self) -> TrainOutcome:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        own = self.out_lock is None
        if own:
            self.out_lock = lock_output_dir(self.out_dir)
        try:
            clean_stale_temps(self.out_dir)  # `.checkpoint.pt.tmp-PID-*` of killed runs
            return self._run()
        finally:
            if own and self.out_lock is not None:
                self.out_lock.release()
                self.out_lock = None

    def _run(self) -> TrainOutcome:
        cfg = self.cfg
        cfg.save(self.out_dir / CONFIG_FILE)
        self._t_session = self._t_rate = time.perf_counter()
        self._session_start_step = self.step
        status = "finished"
        self._report("start")
        while self.step < cfg.total_steps:
            if _cancelled(self.cancel):
                status = "cancelled"
                break
            batch = self.buffer.next_batch()  # [n_layers, B, d_in]
            log = cfg.log_every > 0 and (self.step % cfg.log_every == 0 or self.step + 1 == cfg.total_steps)
            for i, (layer, st) in enumerate(self.layers.items()):
                loss = self._train_layer(layer, st, batch[i], log)
                if not torch.isfinite(loss).item():
                    self._diverged(f"loss became NaN/inf at step {self.step + 1} (layer {layer})")
                self._maybe_resample(i, layer, st)
            self.step += 1
            if log:
                self._report("step")
            if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0 and self.step < cfg.total_steps:
                self._checkpoint_if_finite()
                self._report("checkpoint", checkpoint=str(self.checkpoint_path))
        rate = self._session_rate()
        self._checkpoint_if_finite()
        outcome = TrainOutcome(
            saes={layer: st.sae for layer, st in self.layers.items()},
            status=status,
            step=self.step,
            total_steps=cfg.total_steps,
            tokens=self.step * cfg.batch_size,
            seconds=self.seconds,
            tokens_per_s=rate,
            checkpoint=self.checkpoint_path,
            metrics={layer: dict(st.last) for layer, st in self.layers.items()},
        )
        self._report(status, checkpoint=str(self.checkpoint_path))
        self._t_session = None
        return outcome

    def _diverged(self, what: str) -> None:
        kept = (
            f"kept the last good checkpoint (step {self.last_checkpoint_step}) at {self.checkpoint_path}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        message = f"{what}; training stopped; {kept}"
        self._report("diverged", message=message)
        self._t_session = None
        raise TrainingDiverged(message)

    def _checkpoint_if_finite(self) -> None:
        if not self._all_finite():
            self._diverged(f"weights became NaN/inf by step {self.step}")
        now = time.perf_counter()
        if self._t_session is not None:
            self.seconds += now - self._t_session
            self._t_session = now
        self.write_checkpoint()


def train_saes(
    model,
    token_rows: torch.Tensor,
    cfg: TrainConfig,
    out_dir: str | Path,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
) -> dict[int, SAE]:
    """Train one SAE per layer of `cfg.layers` on `token_rows [rows, context]`; returns `{layer: SAE}`.

    Writes `out_dir/blocks.L.attn.hook_z/` (SAELens dirs), `out_dir/checkpoint.pt` and `out_dir/train_config.json`.
    Safe to call from a worker thread: set `cancel` to stop between steps (a checkpoint is written first).
    Raises TrainingError for bad input and TrainingDiverged for a NaN loss.
    """
    trainer = Trainer(model, token_rows, cfg, out_dir, on_progress=on_progress, cancel=cancel, device=device)
    trainer.out_lock = lock = lock_output_dir(out_dir)  # before the checkpoint is read: one writer per directory
    try:
        if resume:
            trainer.resume()
        return trainer.run().saes
    finally:
        lock.release()


@contextmanager
def stop_on_signals(cancel: threading.Event) -> Iterator[None]:
    """While active (main thread only), Ctrl-C and SIGTERM set `cancel` instead of killing the process, so the
    trainer finishes its step and writes a checkpoint. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}

    def handler(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
