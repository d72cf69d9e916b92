"""The training schedule: warm-up, learning rate, resampling windows and the dead-latent window, scaled to the run.

Settings left at None in `TrainConfig` are chosen from the run's length so that short runs finish warm-up early
and still resample, and long runs get the paper's values (caps): warm-up 5% of the steps (at most 1000),
resampling every tenth of the run (at most every 25000 steps, the paper's) over a window of half that, and a
latent is dead after an eighth of the run's tokens without firing (at most 10M tokens, Gao et al.'s window).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

WARMUP_FRACTION, WARMUP_CAP = 0.05, 1000
RESAMPLE_FRACTION, RESAMPLE_CAP = 0.1, 25_000
DEAD_FRACTION, DEAD_TOKENS_CAP = 0.125, 10_000_000


@dataclass(frozen=True)
class Schedule:
    """The resolved schedule of one run (steps unless named tokens); saved in the checkpoint, so a resumed run
    keeps the schedule it started with even when `total_tokens` changes."""

    total_steps: int
    warmup_steps: int
    resample_every: int  # 0: never
    resample_window: int
    dead_tokens: int
    chosen: tuple[str, ...] = ()  # the settings that were chosen here rather than given

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schedule":
        return cls(**{**d, "chosen": tuple(d.get("chosen", ()))})

    def dead_steps(self, batch_size: int) -> int:
        """The dead window in steps (at least 1)."""
        return max(1, math.ceil(self.dead_tokens / batch_size))

    def describe(self, resamples: bool) -> str:
        """One line for the CLI: what the run will do (`resamples`: whether its architecture resamples dead
        latents), chosen values marked with '*'."""
        mark = lambda name: "*" if name in self.chosen else ""  # noqa: E731
        parts = [f"warm-up {self.warmup_steps}{mark('warmup_steps')} steps"]
        if resamples:
            if self.resample_every:
                parts.append(f"resample every {self.resample_every}{mark('resample_every')} steps "
                             f"(window {self.resample_window}{mark('resample_window')})")
            else:
                parts.append("no resampling")
        parts.append(f"dead after {self.dead_tokens:,}{mark('dead_tokens')} silent tokens")
        return ", ".join(parts) + (" (* chosen from the run's length)" if self.chosen else "")

    def warnings(self) -> list[str]:
        out = []
        if self.warmup_steps >= self.total_steps:
            out.append(f"the run ({self.total_steps} steps) is too short to finish its {self.warmup_steps}-step "
                       "warm-up: the learning rate never reaches its set value")
        return out


def resolve_schedule(cfg) -> Schedule:
    """`cfg`'s schedule with every None filled in from the run's length (`cfg: TrainConfig`)."""
    steps = cfg.total_steps
    chosen = []
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = min(WARMUP_CAP, max(1, round(WARMUP_FRACTION * steps)))
        chosen.append("warmup_steps")
    every = cfg.resample_every
    if every is None:
        every = min(RESAMPLE_CAP, max(1, round(RESAMPLE_FRACTION * steps)))
        chosen.append("resample_every")
    window = cfg.resample_window
    if window is None:
        window = max(1, every // 2)
        chosen.append("resample_window")
    dead = cfg.dead_tokens
    if dead is None:
        dead = min(DEAD_TOKENS_CAP, max(cfg.batch_size, round(DEAD_FRACTION * cfg.total_tokens)))
        chosen.append("dead_tokens")
    return Schedule(steps, int(warmup), int(every), int(window), int(dead), tuple(chosen))


def lr_at(step: int, base_lr: float, warmup_steps: int, last_resample_step: int) -> float:
    """Linear warm-up from the run's start and again after each resample."""
    if warmup_steps <= 0:
        return base_lr
    since = step - max(last_resample_step, 0)
    return base_lr * min(1.0, (since + 1) / warmup_steps)


def resample_phase(step: int, every: int, window: int) -> str:
    """What the resampler does after step `step` (0-based, just finished): "resample" at the end of each period of
    `every` steps, "open" when the counting window of the next resample begins, "" otherwise."""
    if every <= 0:
        return ""
    pos = (step + 1) % every
    if pos == 0:
        return "resample"
    if window < every and pos == every - window:
        return "open"
    return ""
