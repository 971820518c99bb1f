"""The training criterion: cross-entropy against soft targets, and label smoothing.

Mixup/cutmix (:mod:`fasternet.training.augment`) mix these smoothed one-hot targets, so one
criterion serves every recipe, with or without mixing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["smooth_targets", "soft_target_cross_entropy"]


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot rows with ``1 - smoothing`` moved off the label and spread over all classes."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    targets = torch.full((labels.numel(), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), on)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(targets * log_softmax(logits))``, computed in fp32."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
