"""Learning-rate schedules: linear warm-up, then cosine decay, per optimizer step or per epoch.

Per step (the default): the warm-up and the cosine are computed at every optimizer step, so a
run of a few epochs gets a smooth warm-up (a fractional number of warm-up epochs is fine).

Per epoch (``schedule="epoch"``): the official recipe's scheduler exactly (pl_bolts'
``LinearWarmupCosineAnnealingLR``, stepped once per epoch): the warm-up adds
``(peak - warmup_lr) / (warmup_epochs - 1)`` per epoch, so it reaches the peak after
``warmup_epochs - 1`` epochs and holds it for one more, then the cosine runs from epoch
``warmup_epochs`` to ``epochs``.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["SCHEDULES", "LrSchedule"]

SCHEDULES = ("step", "epoch")


@dataclasses.dataclass(frozen=True)
class LrSchedule:
    """The learning rate at each step (``mode="step"``) or epoch (``mode="epoch"``) of a run."""

    peak: float
    warmup_lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int
    steps_per_epoch: int = 1
    mode: str = "step"

    def __post_init__(self) -> None:
        if self.mode not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.mode!r}")
        if self.mode == "epoch" and self.warmup_epochs != int(self.warmup_epochs):
            raise ValueError(f"schedule 'epoch' steps per epoch: warmup_epochs must be whole, got {self.warmup_epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch needs at least one step, got {self.steps_per_epoch}")

    @property
    def warmup_steps(self) -> int:
        """Optimizer steps of the warm-up (per-step mode)."""
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def total_steps(self) -> int:
        """Scheduler steps in the whole run: optimizer steps (per step) or epochs (per epoch)."""
        return self.epochs * self.steps_per_epoch if self.mode == "step" else self.epochs

    def _cosine(self, done: float, span: float) -> float:
        progress = min(1.0, done / span) if span > 0 else 1.0
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * progress))

    def __call__(self, index: int) -> float:
        """The learning rate after ``index`` scheduler steps (optimizer steps, or epochs)."""
        if self.mode == "epoch":
            warmup = int(self.warmup_epochs)
            if index < warmup:
                return self.warmup_lr + index * (self.peak - self.warmup_lr) / max(1, warmup - 1)
            return self._cosine(index - warmup, self.epochs - warmup)
        warmup = self.warmup_steps
        if index < warmup:
            return self.warmup_lr + (self.peak - self.warmup_lr) * index / warmup
        return self._cosine(index - warmup, self.total_steps - warmup)

    def describe(self) -> str:
        """One line for the run's start: mode, warm-up and decay."""
        epochs = f"{self.warmup_epochs:g} epoch{'' if self.warmup_epochs == 1 else 's'}"
        if self.mode == "epoch":
            warmup = f"warm-up {epochs} from {self.warmup_lr:g} (per epoch, as the official code)"
        elif self.warmup_steps:
            warmup = f"warm-up {epochs} = {self.warmup_steps} steps from {self.warmup_lr:g}"
        else:
            warmup = "no warm-up"
        return f"schedule {self.mode}: {warmup}, cosine to {self.min_lr:g} at epoch {self.epochs}"
