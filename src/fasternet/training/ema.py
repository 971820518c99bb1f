"""An exponential moving average of the weights, evaluated and saved beside the raw ones.

Short runs on small data gain most from it. The decay warms up as ``(1 + n) / (10 + n)`` over
the first updates (capped at ``decay``), so a run of a few hundred steps is not dominated by
the random initialization. Buffers (BN running statistics) are averaged too.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """``ema.update(model)`` after each optimizer step; ``ema.module`` is the averaged model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        averaged = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = averaged[name]
            if target.is_floating_point():
                target.lerp_(value.to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
