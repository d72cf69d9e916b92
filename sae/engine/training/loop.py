"""The training loop: attention-output SAEs on hook_z, many layers (and sparsity values) from one model pass.

The recipe (Kissane et al. 2024, see PAPER.md) and what attnscope adds:
- one step per architecture: its class in the registry (`sae.engine.autoencoder.REGISTRY`, `cfg.arch.step`), with
  its kernels in `sae.engine.training.steps` (standard: ReLU + L1 with a hand-written backward; topk: top-k + AuxK,
  decoded through the k active rows), and its defaults (decoder norm, resampling, AuxK, where b_dec starts);
- the schedule (warm-up, resampling windows, dead-latent window, all scaled to the run): `sae.engine.training.schedule`;
- reviving dead features (Anthropic-style resampling) and firing trackers: `sae.engine.training.resampling`;
- every default and its help text: `sae.engine.training.config.TrainConfig`;
- data parallelism over `torch.distributed` (data shards, the gradient all-reduce, rank-0 files): the `sync` and
  `buffer` hooks, defined in `sae.engine.training.distributed`; the run's files: `sae.engine.training.checkpoint`.

Activations are attnscope's hook_z (value bias removed). By default they are scaled so E||z|| = sqrt(d_in)
(`normalize_activations="expected_average_only_in"`, the scale estimated on the first buffer) and the scale is
folded into the saved weights (`fold_input_scale`), so a saved SAE reads raw z.

`train_saes(model, token_rows, cfg, out_dir)` is the entry point for Python callers (the CLI, the workbench's
training screen in a worker thread). Progress goes out as `sae.engine.jobs.Progress` (job "train", unit "tokens");
a `CancelToken` stops a run between steps with a checkpoint written.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from sae.engine.activations import ZSource, rows_digest
from sae.engine.autoencoder import SAE, SAEConfig, fold_decoder_norm, fold_input_scale
from sae.engine.training.adam import Adam
from sae.engine.training.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    load_checkpoint,
    read_lane_states,
    save_checkpoint,
    write_checkpoint,
)
from sae.engine.training.distributed import LocalSync, ShardedBuffer, Sync
from sae.engine.formats import save_sae
from sae.engine.jobs import CancelToken, Cancelled, Progress, ProgressFn
from sae.engine.models import z_hook_name
from sae.engine.training.resampling import FiringTracker, resample_dead
from sae.engine.safe_io import DirLock, clean_stale_temps
from sae.engine.training.schedule import Schedule, lr_at, resample_phase, resolve_schedule
from sae.engine.training.config import PRESETS, TrainConfig, TrainingDiverged, TrainingError
from sae.engine.training.sweep import sweep_label
from sae.engine.training.steps import (
    StepSettings,
    init_decoder_norm,
    remove_parallel_grad,
    sae_forward_train,
    standard_loss,
    standard_step_grads,
    topk_aux_loss,
    topk_step_grads,
)

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "PRESETS", "Schedule", "TrainConfig", "Trainer", "TrainingDiverged",
    "TrainingError", "TrainOutcome", "load_checkpoint", "save_checkpoint", "lr_at", "make_optimizer", "remove_parallel_grad",
    "resample_dead", "sae_forward_train", "standard_loss", "standard_step_grads", "stop_on_signals",
    "topk_aux_loss", "topk_step_grads", "train_saes",
]

def init_sae(d_in: int, n_heads: int | None, model_name: str, layer: int, cfg: TrainConfig, value: float,
             device: torch.device) -> SAE:
    """A fresh SAE for one layer at sweep value `value`, seeded from (seed, layer) only, so every layer's init is
    reproducible on its own and every point of a sparsity sweep starts from the same weights as a lone run."""
    scfg = SAEConfig(
        d_in=d_in,
        d_sae=cfg.width(layer, d_in),
        hook_name=z_hook_name(layer),
        architecture=cfg.architecture,
        model_name=model_name,
        n_heads=n_heads,
        context_size=cfg.context_size,
        **cfg.arch.config_fields(value),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1009 + layer)
        sae = SAE(scfg)
    if cfg.decoder_norm == "rescale":
        init_decoder_norm(sae, cfg.decoder_init_norm)
    return sae.to(device)


def b_dec_starts_at_mean(cfg: TrainConfig, mean_share: float) -> bool:
    """Whether b_dec starts at the mean activation. `mean_share` = |mean|^2 / E|x|^2 of the first buffer.

    "mean" / "zeros" say so; "auto" asks the architecture (`Architecture.b_dec_starts_at_mean`: always for top-k;
    for standard SAEs only when the mean carries at least 40% of the activations' energy)."""
    if cfg.b_dec_init == "auto":
        return cfg.arch.b_dec_starts_at_mean(mean_share)
    return cfg.b_dec_init == "mean"


GEOMETRIC_MEDIAN_POINTS = 16384  # activations of the first buffer the geometric-median b_dec start is taken over


@torch.no_grad()
def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to the rows of `x [n, d]` (Weiszfeld's iteration, from
    the mean; a point sitting on a row is kept off it by a 1e-12 floor on the distances). Returns `[d]`."""
    pts = x.double()
    m = pts.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (pts - m).norm(dim=1).clamp_min(1e-12)
        new = (w.unsqueeze(1) * pts).sum(0) / w.sum()
        moved = float((new - m).norm())
        m = new
        if moved <= tol * max(1.0, float(m.norm())):
            break
    return m.to(x.dtype)


def make_optimizer(sae: SAE, cfg: TrainConfig) -> Adam:
    """Adam over the SAE's parameters (`sae.engine.training.adam`: torch's update to float rounding, without the
    ~1.4 s `torch._dynamo` import that building a `torch.optim` optimizer costs)."""
    return Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def activation_scale(x: torch.Tensor) -> float:
    """The `expected_average_only_in` factor for activations `x [n, d_in]`: sqrt(d_in) / mean ||x||."""
    mean_norm = x.float().norm(dim=-1).mean().item()
    return math.sqrt(x.shape[-1]) / mean_norm if mean_norm > 0 and math.isfinite(mean_norm) else 1.0


# ---- one SAE being trained -----------------------------------------------------------------------------------


@dataclass
class Unit:
    """One SAE being trained: its layer (and slot in the activation buffer), sparsity value, optimizer, firing
    tracker and resampling state."""

    layer: int
    slot: int
    value: float
    label: str  # "" for a single run, "k32" / "l1_0.5" in a sweep
    sae: SAE
    opt: Adam
    tracker: FiringTracker
    generator: torch.Generator
    n_resamples: int = 0
    last_resample_step: int = 0
    last: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.label}/L{self.layer}" if self.label else f"L{self.layer}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "tracker": self.tracker.state_dict(),
            "generator": self.generator.get_state(),
            "n_resamples": self.n_resamples,
            "last_resample_step": self.last_resample_step,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.sae.load_state_dict(s["sae"])
        self.opt.load_state_dict(s["opt"])
        self.tracker.load_state_dict(s["tracker"])
        self.generator.set_state(s["generator"])
        self.n_resamples = int(s["n_resamples"])
        self.last_resample_step = int(s["last_resample_step"])


# ---- files ----------------------------------------------------------------------------------------------------


def lock_output_dir(out_dir: str | Path) -> DirLock:
    """Hold `out_dir` for one training run; a second writer gets a one-line `LockedError` at once."""
    return DirLock(Path(out_dir), what="attnscope train").acquire()



def sae_dir_name(layer: int) -> str:
    return z_hook_name(layer)


# ---- the trainer ---------------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    """How a run ended: 'finished' or 'cancelled', with the SAEs as they were saved (reading raw z).

    `saes` holds the first sweep value's SAE per layer; `sweep` every point, keyed by label ("k32")."""

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
    sweep: dict[str, dict[int, SAE]] = field(default_factory=dict)
    sweep_metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # this session's CPU time (all threads) over the same span as `tokens_per_s`


class Trainer:
    """Trains one SAE per layer in `cfg.layers` (and per sparsity value of a sweep) from one activation pass.

    Activations come from `model` over `token_rows` (`ZSource`), or from `source`, any object with
    `next_chunk() -> [n_layers, n_tokens, d_in]`, `layers`, `d_in`, `n_heads`, `model_name`, `digest`,
    `state_dict()` and `load_state_dict()` (an activation cache: `sae.engine.activation_cache.CacheSource`).
    """

    def __init__(
        self,
        model,
        token_rows: torch.Tensor | None,
        cfg: TrainConfig,
        out_dir: str | Path,
        on_progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        device: str | torch.device | None = None,
        source: Any = None,
        sync: Sync | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        # data parallelism (sae.engine.training.distributed): batch_size is the global batch, split into data_shards lanes
        self.sync = sync if sync is not None else LocalSync()
        cfg.world_size = self.sync.world_size
        if cfg.data_shards is None:
            cfg.data_shards = self.sync.world_size
        self.out_dir = Path(out_dir)
        self.on_progress = on_progress
        self.cancel = cancel if cancel is not None else CancelToken()
        if source is not None:
            self.device = torch.device(device) if device is not None else torch.device("cpu")
            if list(source.layers) != list(cfg.layers):
                raise TrainingError(f"the activation source holds layers {list(source.layers)}, the config asks "
                                    f"for {cfg.layers}")
            d_in, n_heads, model_name, self.digest = source.d_in, source.n_heads, source.model_name, source.digest
            self.source = source
        else:
            if model is None or token_rows is None:
                raise TrainingError("training needs a model and token rows, or an activation cache")
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
            d_in, n_heads, model_name = model.d_z, model.n_heads, model.name
            self.digest = rows_digest(token_rows)
            autocast = torch.bfloat16 if (cfg.autocast and self.device.type == "cuda") else None
            self.source = ZSource(model, token_rows, cfg.layers, cfg.rows_per_pass, cfg.seed, autocast)
        if not cfg.model_name:
            cfg.model_name = model_name
        self.d_in = d_in
        self.autocast_dtype = torch.bfloat16 if (cfg.autocast and self.device.type == "cuda") else None
        self.schedule: Schedule = resolve_schedule(cfg)
        self.buffer = ShardedBuffer(self.source, len(cfg.layers), d_in, cfg, self.device, self.sync)
        self.scales: dict[int, float] | None = None  # per layer, set from the first buffer
        param = cfg.sparsity_param
        self.units: list[Unit] = []
        for value in cfg.sweep_values:
            label = sweep_label(param, value) if cfg.is_sweep else ""
            for slot, layer in enumerate(cfg.layers):
                sae = init_sae(d_in, n_heads, model_name, layer, cfg, value, self.device)
                self.units.append(Unit(
                    layer=layer, slot=slot, value=float(value), label=label, sae=sae, opt=make_optimizer(sae, cfg),
                    tracker=FiringTracker(sae.cfg.d_sae, self.device),
                    generator=torch.Generator().manual_seed(cfg.seed * 1009 + layer),
                ))
        self.step = 0
        self.seconds = 0.0  # training seconds of earlier sessions and up to the last checkpoint
        self._t_session: float | None = None
        self._session_start_step = 0
        self._stop_requested = False
        self.last_checkpoint_step: int | None = None
        self.out_lock: DirLock | None = None  # held by the caller (the CLI takes it before loading anything)

    # -- checkpoints --

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    @property
    def layers(self) -> dict[int, Unit]:
        """The first sweep value's unit per layer (what a single run trains)."""
        out: dict[int, Unit] = {}
        for u in self.units:
            out.setdefault(u.layer, u)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "cfg": self.cfg.to_dict(),
            "schedule": self.schedule.to_dict(),
            "scales": self.scales,
            "step": self.step,
            "seconds": self.seconds,
            "rows_digest": self.digest,
            "units": {u.name: u.state_dict() for u in self.units},
        }

    def resume(self) -> None:
        """Restore everything from `out_dir/checkpoint.pt`; the run then continues bit-for-bit."""
        state = load_checkpoint(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{self.checkpoint_path} was written by an older attnscope; start a new run")
        saved = TrainConfig.from_dict(state["cfg"])
        mine = self.cfg.to_dict()
        for key, value in saved.to_dict().items():
            if key in TrainConfig.RESUMABLE_CHANGES or key in ("model_name", "corpus", "activations"):
                continue
            if mine.get(key) != value:
                raise TrainingError(f"the checkpoint was made with {key}={value!r}, this run asks for {mine.get(key)!r}")
        if state["rows_digest"] != self.digest:
            raise TrainingError("the corpus (or tokenizer / context size) differs from the one the checkpoint was made with")
        for u in self.units:
            u.load_state_dict(state["units"][u.name])
        saved_schedule = Schedule.from_dict(state["schedule"])
        self.schedule = Schedule(
            self.cfg.total_steps, saved_schedule.warmup_steps, saved_schedule.resample_every,
            saved_schedule.resample_window, saved_schedule.dead_tokens, saved_schedule.chosen)
        self.scales = {int(k): float(v) for k, v in state["scales"].items()} if state["scales"] else None
        self.buffer.load_lane_states(read_lane_states(self.checkpoint_path, state, self.buffer.owned))
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self.last_checkpoint_step = self.step

    def _all_finite(self) -> bool:
        return all(torch.isfinite(p).all().item() for u in self.units for p in u.sae.parameters())

    def _save_state(self) -> None:
        """The checkpoint: global state from rank 0, each process's data lanes from itself."""
        write_checkpoint(self.checkpoint_path, self.state_dict(), self.buffer.lane_states(), self.step, self.sync)

    def write_checkpoint(self) -> dict[str, dict[int, SAE]]:
        """Write `checkpoint.pt` and every SAE (folded, reading raw z); returns the saved SAEs by sweep label."""
        self._save_state()
        saved = self.save_saes()
        self.last_checkpoint_step = self.step
        return saved

    def unit_dir(self, u: Unit) -> Path:
        return (self.out_dir / u.label if u.label else self.out_dir) / sae_dir_name(u.layer)

    def saved_sae(self, u: Unit) -> SAE:
        """A copy of `u`'s SAE that reads raw z: the activation scale folded into its weights."""
        sae = copy.deepcopy(u.sae)
        if self.cfg.decoder_norm == "rescale":
            fold_decoder_norm(sae)
        scale = self.scales.get(u.layer, 1.0) if self.scales else 1.0
        fold_input_scale(sae, scale)
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in ("layers", "layer_l1", "layer_d_sae")}
        train.update({
            self.cfg.sparsity_param: self.cfg.sparsity_for(u.layer, u.value),
            "d_sae": sae.cfg.d_sae,
            "activation_scale": scale,
            "schedule": self.schedule.to_dict(),
            "steps_done": self.step,
            "tokens_done": self.step * self.cfg.batch_size,
            "global_batch": self.cfg.batch_size,
            "world_size": self.sync.world_size,
            "n_resamples": u.n_resamples,
        })
        sae.cfg.extra = {**sae.cfg.extra, "training": train}
        return sae

    def save_saes(self) -> dict[str, dict[int, SAE]]:
        out: dict[str, dict[int, SAE]] = {}
        for u in self.units:
            sae = self.saved_sae(u)
            if self.sync.is_main:
                save_sae(sae, self.unit_dir(u), u.tracker.log10_density())
            out.setdefault(u.label, {})[u.layer] = sae
        return out

    # -- progress --

    def elapsed(self) -> float:
        """Training seconds over all sessions of this run (resumes included)."""
        return self.seconds + (time.perf_counter() - self._t_session if self._t_session is not None else 0.0)

    def _session_rate(self) -> float:
        """Tokens per second processed by this process (steps restored from a checkpoint do not count)."""
        if self._t_session is None:
            return 0.0
        dt = time.perf_counter() - self._t_rate
        steps = self.step - self._session_start_step
        return steps * self.cfg.batch_size / dt if dt > 0 and steps > 0 else 0.0

    def progress(self, note: str = "") -> Progress:
        cfg = self.cfg
        rate = self._session_rate()
        total = cfg.total_steps * cfg.batch_size
        done = self.step * cfg.batch_size
        metrics: dict[str, float] = {}
        if self.units:
            metrics.update(self.units[0].last)
        if len(self.units) > 1:
            for u in self.units:
                metrics.update({f"{u.name}.{k}": v for k, v in u.last.items()})
        return Progress(
            job="train", done=done, total=total, unit="tokens", stage=f"step {self.step}/{cfg.total_steps}",
            rate=rate or None, eta_s=(total - done) / rate if rate > 0 else None, note=note, metrics=metrics,
        )

    def _report(self, note: str) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(self.progress(note))
        except Cancelled:  # the caller's progress hook may say stop: finish the step, checkpoint, return
            self._stop_requested = True
        except Exception:  # noqa: BLE001 - a broken display must not kill a long run
            pass

    # -- the loop --

    def _normalize_setup(self) -> None:
        """Estimate each layer's activation scale on the first buffer (1.0 when normalisation is off) and start
        b_dec at the mean scaled activation where `cfg.b_dec_init` says so (`b_dec_starts_at_mean`)."""
        if self.scales is not None:
            return
        if not self.buffer.filled:
            self.buffer.fill()
        self.scales = {}
        for slot, layer in enumerate(self.cfg.layers):
            mean_norm, mean_x, mean_sq = self.buffer.first_moments(slot)  # over every data shard
            s = 1.0
            if self.cfg.normalize_activations == "expected_average_only_in" and mean_norm > 0 and math.isfinite(mean_norm):
                s = math.sqrt(self.d_in) / mean_norm
            self.scales[layer] = s
            share = float(mean_x.double().pow(2).sum()) / mean_sq if mean_sq > 0 else 0.0
            if self.cfg.b_dec_init == "geometric-median":
                gen = torch.Generator().manual_seed(self.cfg.seed * 1009 + layer)
                n = min(GEOMETRIC_MEDIAN_POINTS, self.buffer.capacity * self.buffer.n_lanes)
                start = geometric_median(self.buffer.sample(n, slot, gen).float()).to(self.device) * s
                for u in self.units:
                    if u.layer == layer:
                        with torch.no_grad():
                            u.sae.b_dec.copy_(start)
                continue
            if not b_dec_starts_at_mean(self.cfg, share):
                continue
            mean = mean_x.to(self.device) * s
            for u in self.units:
                if u.layer == layer:
                    with torch.no_grad():
                        u.sae.b_dec.copy_(mean)

    def _train_unit(self, u: Unit, x: torch.Tensor, log: bool) -> torch.Tensor:
        cfg, sched, arch = self.cfg, self.schedule, self.cfg.arch
        sae = u.sae
        lr = lr_at(self.step, cfg.lr, sched.warmup_steps, u.last_resample_step if u.n_resamples else 0)
        for group in u.opt.param_groups:
            group["lr"] = lr
        dead = u.tracker.dead(sched.dead_tokens) if arch.uses_dead_latents and cfg.aux_coeff > 0 else None
        settings = StepSettings(cfg.sparsity_for(u.layer, u.value), cfg.decoder_norm, dead,
                                cfg.aux_k or max(1, self.d_in // 2), cfg.aux_coeff)
        out = arch.step(sae, x, settings, autocast=self.autocast_dtype)
        loss, mse, aux, fired, x_hat = out.loss, out.mse, out.aux, out.fired, out.x_hat
        rescale = cfg.decoder_norm == "rescale"
        fired, loss = self.sync.reduce_step(list(sae.parameters()), fired, loss)  # data parallel: mean grads
        n_global = x.shape[0] * self.sync.world_size
        if not rescale:
            remove_parallel_grad(sae)
        u.opt.step()
        if not rescale:
            sae.set_decoder_norm_to_unit()
        u.tracker.update(fired, n_global)
        if log:
            with torch.no_grad():
                err = (x_hat.float() - x).pow(2).sum()
                var = (x - x.mean(0)).pow(2).sum()
                window = min(sched.dead_tokens, u.tracker.total_tokens)
                u.last = {
                    "loss": loss.item(),
                    "mse": mse.item(),
                    arch.sparsity_metric: float(aux),
                    "l0": fired.sum().item() / n_global,
                    "explained_variance": 1.0 - (err / var.clamp_min(1e-12)).item(),
                    "dead_fraction": u.tracker.dead(window).float().mean().item(),
                    "lr": lr,
                    "n_resamples": u.n_resamples,
                }
        return loss.detach()

    def _maybe_resample(self, u: Unit) -> None:
        cfg, sched = self.cfg, self.schedule
        if not cfg.arch.resamples or u.n_resamples >= cfg.max_resamples:
            return
        phase = resample_phase(self.step, sched.resample_every, sched.resample_window)
        if phase == "open":
            u.tracker.reset_window()
        elif phase == "resample" and u.tracker.window_tokens > 0:
            dead = u.tracker.window_dead(cfg.dead_threshold)
            scale = self.scales.get(u.layer, 1.0) if self.scales else 1.0
            inputs = self.buffer.sample(cfg.resample_sample, u.slot, u.generator) * scale
            n = resample_dead(u.sae, u.opt, dead, inputs, u.generator)
            self.sync.broadcast_([p for p in u.sae.parameters()])  # every replica keeps rank 0's revival
            u.n_resamples += 1
            u.last_resample_step = self.step + 1
            u.tracker.tokens_since_fired[dead] = 0
            u.tracker.reset_window()
            u.last["resampled"] = n

    def run(self) -> TrainOutcome:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        own = self.out_lock is None and self.sync.is_main  # one writer per directory: rank 0 holds the lock
        if own:
            self.out_lock = lock_output_dir(self.out_dir)
        try:
            if self.sync.is_main:
                clean_stale_temps(self.out_dir)  # `.checkpoint.pt.tmp-PID-*` of killed runs
            return self._run()
        finally:
            self.buffer.close()  # prefetching threads, if any
            if own and self.out_lock is not None:
                self.out_lock.release()
                self.out_lock = None

    def _run(self) -> TrainOutcome:
        cfg = self.cfg
        if self.sync.is_main:
            cfg.save(self.out_dir / CONFIG_FILE)
        self._t_session = self._t_rate = time.perf_counter()
        cpu0 = time.process_time()
        self._session_start_step = self.step
        status = "finished"
        self._normalize_setup()
        scales = torch.tensor([self.scales[layer] for layer in cfg.layers], device=self.device).view(-1, 1, 1)
        normalize = bool((scales != 1.0).any())
        self._report("start")
        while self.step < cfg.total_steps:
            if self.sync.any(self._stop_requested or self.cancel.cancelled):
                status = "cancelled"
                break
            batch = self.buffer.next_batch()  # [n_layers, B, d_in]
            if normalize:
                batch = batch * scales
            log = cfg.log_every > 0 and (self.step % cfg.log_every == 0 or self.step + 1 == cfg.total_steps)
            for u in self.units:
                loss = self._train_unit(u, batch[u.slot], log)
                if not torch.isfinite(loss).item():
                    self._diverged(f"loss became NaN/inf at step {self.step + 1} (layer {u.layer})")
                self._maybe_resample(u)
            self.step += 1
            if log:
                self._report("step")
            if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0 and self.step < cfg.total_steps:
                self._checkpoint_if_finite()
                self._report("checkpoint")
        rate = self._session_rate()
        cpu = time.process_time() - cpu0
        saved = self._checkpoint_if_finite()
        first = saved.get(self.units[0].label, {}) if self.units else {}
        outcome = TrainOutcome(
            saes=dict(first),
            status=status,
            step=self.step,
            total_steps=cfg.total_steps,
            tokens=self.step * cfg.batch_size,
            seconds=self.seconds,
            tokens_per_s=rate,
            checkpoint=self.checkpoint_path,
            metrics={layer: dict(u.last) for layer, u in self.layers.items()},
            sweep=saved if cfg.is_sweep else {},
            sweep_metrics={
                label: {u.layer: dict(u.last) for u in self.units if u.label == label} for label in saved
            } if cfg.is_sweep else {},
            cpu_seconds=cpu,
        )
        self._report(status)
        self._t_session = None
        return outcome

    def _diverged(self, what: str) -> None:
        kept = (
            f"kept the last good checkpoint (step {self.last_checkpoint_step}) at {self.checkpoint_path}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        message = f"{what}; training stopped; {kept}"
        self._report("diverged: " + message)
        self._t_session = None
        raise TrainingDiverged(message)

    def _checkpoint_if_finite(self) -> dict[str, dict[int, SAE]]:
        if not self._all_finite():
            self._diverged(f"weights became NaN/inf by step {self.step}")
        now = time.perf_counter()
        if self._t_session is not None:
            self.seconds += now - self._t_session
            self._t_session = now
        return self.write_checkpoint()


def train_saes(
    model,
    token_rows: torch.Tensor | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    source: Any = None,
) -> dict[int, SAE]:
    """Train one SAE per layer of `cfg.layers` on `token_rows [rows, context]`; returns `{layer: SAE}` (reading
    raw z; a sweep returns its first point, all points are on disk).

    Writes `out_dir/blocks.L.attn.hook_z/` (SAELens dirs; `out_dir/<label>/...` per sweep point),
    `out_dir/checkpoint.pt` and `out_dir/train_config.json`. Safe to call from a worker thread: cancelling stops
    between steps after writing a checkpoint, and the SAEs as they are then are returned.
    Raises TrainingError for bad input and TrainingDiverged for a NaN loss.
    """
    trainer = Trainer(model, token_rows, cfg, out_dir, on_progress=on_progress, cancel=cancel, device=device,
                      source=source)
    lock = lock_output_dir(out_dir) if trainer.sync.is_main else None  # before the checkpoint is read
    trainer.out_lock = lock
    try:
        if resume:
            trainer.resume()
        return trainer.run().saes
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def stop_on_signals(cancel: CancelToken) -> Iterator[None]:
    """While active (main thread only), Ctrl-C and SIGTERM set `cancel` instead of killing the process, so the
    trainer finishes its step and writes a checkpoint. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}

    def handler(signum, frame) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
