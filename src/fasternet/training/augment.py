"""Batched training augmentation on the training device: flip, RandAugment, mixup/cutmix.

The recipe is the official one (timm's ``rand-m{M}-mstd0.5-inc1`` RandAugment, mixup and cutmix
with switch probability 0.5, label smoothing 0.1). Random choices that belong to one sample
(flip, which operations, their magnitudes and signs) are drawn on the CPU workers from that
sample's own generator (:mod:`fasternet.data`) and travel with the batch as a small tensor; the
device applies them batched with kornia. Mixup and cutmix pair samples within a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from types import ModuleType

import numpy as np
import torch

from fasternet._utils import require
from fasternet.training.loss import smooth_targets

__all__ = ["BatchAugment", "Mixup", "RandAugmentSpec", "SampleParams"]


@functools.cache
def _kornia() -> ModuleType:
    """kornia (the ``train`` extra), imported when augmentation first runs."""
    require("kornia")
    import kornia.color
    import kornia.enhance
    import kornia.geometry.transform

    return kornia


# timm's increasing-severity RandAugment set ("inc1"), in its order.
OPS = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
MAGNITUDE_MAX = 10.0


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    """A timm-style RandAugment string: ``rand-m7-mstd0.5-inc1`` (n ops of magnitude m +- mstd)."""

    magnitude: float
    num_ops: int = 2
    magnitude_std: float = 0.5
    prob: float = 0.5
    increasing: bool = True

    @classmethod
    def parse(cls, spec: str) -> RandAugmentSpec:
        parts = spec.split("-")
        if parts[0] != "rand" or len(parts) < 2:
            raise ValueError(f"invalid RandAugment spec {spec!r}; expected e.g. 'rand-m7-mstd0.5-inc1'")
        fields: dict = {}
        for part in parts[1:]:
            match = re.fullmatch(r"(mstd|inc|m|n|p)([\d.]+)", part)
            if not match:
                raise ValueError(f"invalid RandAugment spec {spec!r}: cannot read {part!r}")
            key, value = match.groups()
            if key == "m":
                fields["magnitude"] = float(value)
            elif key == "n":
                fields["num_ops"] = int(value)
            elif key == "mstd":
                fields["magnitude_std"] = float(value)
            elif key == "p":
                fields["prob"] = float(value)
            else:
                fields["increasing"] = bool(int(value))
        if "magnitude" not in fields:
            raise ValueError(f"invalid RandAugment spec {spec!r}: no magnitude (m)")
        if not fields.get("increasing", True):
            raise ValueError("only the increasing-severity op set (inc1) of the official recipe is implemented")
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class SampleParams:
    """Draws one sample's augmentation choices.

    [flip, (op, applied, magnitude, sign) x n ops, (erase, top, left, height, width) if erasing];
    the erased box is in fractions of the image, drawn as timm's RandomErasing draws it (area
    2-33%, aspect 0.3-3.3).
    """

    randaugment: RandAugmentSpec | None = None
    hflip: float = 0.5
    random_erasing: float = 0.0

    @property
    def width(self) -> int:
        return 1 + 4 * (self.randaugment.num_ops if self.randaugment else 0) + (5 if self.random_erasing else 0)

    def __call__(self, rng: np.random.Generator) -> torch.Tensor:
        values = [float(rng.random() < self.hflip)]
        spec = self.randaugment
        if spec is not None:
            for _ in range(spec.num_ops):
                op = int(rng.integers(len(OPS)))  # with replacement, as timm
                applied = float(rng.random() < spec.prob)
                magnitude = spec.magnitude
                if spec.magnitude_std > 0:
                    magnitude = rng.normal(magnitude, spec.magnitude_std)
                magnitude = float(np.clip(magnitude, 0.0, MAGNITUDE_MAX))
                sign = 1.0 if rng.random() < 0.5 else -1.0
                values += [op, applied, magnitude, sign]
        if self.random_erasing:
            values += _erase_box(rng, self.random_erasing)
        return torch.tensor(values, dtype=torch.float32)


def _erase_box(rng: np.random.Generator, probability: float) -> list[float]:
    """[applied, top, left, height, width], the box in fractions of the image."""
    if rng.random() >= probability:
        return [0.0, 0.0, 0.0, 0.0, 0.0]
    for _ in range(10):
        area = rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        height, width = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if height < 1 and width < 1:
            return [1.0, rng.uniform(0, 1 - height), rng.uniform(0, 1 - width), height, width]
    return [0.0, 0.0, 0.0, 0.0, 0.0]


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 1)


def _with_fill(warp, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Geometric ops pad with zeros; shift so the border takes the fill color instead."""
    return warp(x - fill) + fill


def _apply_op(name: str, x: torch.Tensor, level: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """One RandAugment op on images in [0, 1]; ``level`` is the signed magnitude in [-10, 10]."""
    unsigned = level.abs() / MAGNITUDE_MAX
    signed = level / MAGNITUDE_MAX
    if name == "auto_contrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-6), torch.ones_like(high))
        offset = torch.where(high > low, low, torch.zeros_like(low))
        return ((x - offset) * scale).clamp_(0, 1)
    kornia = _kornia()
    if name == "equalize":
        return kornia.enhance.equalize(x)
    if name == "invert":
        return 1 - x
    if name == "rotate":
        return _with_fill(lambda t: kornia.geometry.transform.rotate(t, signed * 30.0), x, fill)
    if name == "posterize":
        bits = (4 - (unsigned * 4).floor()).clamp_(0, 8)
        step = (2 ** (8 - bits)).view(-1, 1, 1, 1)
        return torch.floor(torch.round(x * 255) / step) * step / 255
    if name == "solarize":
        threshold = (256 - (unsigned * 256).floor()).view(-1, 1, 1, 1) / 255
        return torch.where(x >= threshold, 1 - x, x)
    if name == "solarize_add":
        add = (unsigned * 110).floor().view(-1, 1, 1, 1) / 255
        return torch.where(x < 128 / 255, (x + add).clamp(0, 1), x)
    factor = (1 + signed * 0.9).clamp_min(0.1)
    if name == "color":
        return _blend(kornia.color.rgb_to_grayscale(x).expand_as(x), x, factor)
    if name == "contrast":
        mean = kornia.color.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(mean.expand_as(x), x, factor)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, factor)
    if name == "sharpness":
        return kornia.enhance.sharpness(x, factor).clamp_(0, 1)
    if name in ("shear_x", "shear_y"):
        amount = signed * 0.3
        zeros = torch.zeros_like(amount)
        pair = torch.stack([amount, zeros] if name == "shear_x" else [zeros, amount], dim=1)
        return _with_fill(lambda t: kornia.geometry.transform.shear(t, pair), x, fill)
    if name in ("translate_x", "translate_y"):
        size = x.shape[3] if name == "translate_x" else x.shape[2]
        amount = signed * 0.45 * size
        zeros = torch.zeros_like(amount)
        pair = torch.stack([amount, zeros] if name == "translate_x" else [zeros, amount], dim=1)
        return _with_fill(lambda t: kornia.geometry.transform.translate(t, pair), x, fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


@dataclasses.dataclass
class Mixup:
    """Mixup / CutMix with label smoothing, as timm's ``Mixup`` in batch mode (pairs: the reversed batch)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    num_classes: int = 1000

    def targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        """Each sample's smoothed one-hot mixed with its partner's (the reversed batch) by ``lam``."""
        one_hot = smooth_targets(labels, self.num_classes, self.label_smoothing)
        return one_hot * lam + one_hot.flip(0) * (1.0 - lam)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = 1.0
        use_cutmix = False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = torch.rand(()).item() < self.switch_prob
        elif self.cutmix_alpha > 0:
            use_cutmix = True
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        if alpha > 0:
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            if use_cutmix:
                h, w = x.shape[-2:]
                cut = math.sqrt(1 - lam)
                cut_h, cut_w = int(h * cut), int(w * cut)
                cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
                y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
                x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
                x = x.clone()
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        return x, self.targets(labels, lam)


class BatchAugment(torch.nn.Module):
    """uint8 batch + per-sample params -> normalized float batch and soft targets, on any device."""

    def __init__(
        self, *, mean, std, randaugment: RandAugmentSpec | None, mixup: Mixup, random_erasing: bool = False
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.randaugment = randaugment
        self.mixup = mixup
        self.random_erasing = random_erasing

    @torch.no_grad()
    def forward(self, images: torch.Tensor, labels: torch.Tensor, params: torch.Tensor):
        x = images.float().div_(255)
        flip = params[:, 0].bool().view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        if self.randaugment is not None:
            fill = self.mean.to(x.dtype)
            for layer in range(self.randaugment.num_ops):
                op, applied, magnitude, sign = params[:, 1 + 4 * layer : 5 + 4 * layer].unbind(1)
                for index in torch.unique(op[applied > 0]).tolist():
                    selected = ((op == index) & (applied > 0)).nonzero().squeeze(1)
                    level = (magnitude * sign)[selected]
                    x[selected] = _apply_op(OPS[int(index)], x[selected], level, fill)
        x = (x - self.mean) / self.std
        if self.random_erasing:
            x = _erase(x, params[:, -5:])
        return self.mixup(x, labels)


def _erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Replace each selected box by normal noise (on normalized pixels, timm's 'pixel' mode)."""
    n, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    applied, top, left, box_h, box_w = (v.view(n, 1, 1) for v in boxes.unbind(1))
    y0, x0 = (top * height).floor(), (left * width).floor()
    y1, x1 = y0 + (box_h * height).round().clamp_min(1), x0 + (box_w * width).round().clamp_min(1)
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1) & (applied > 0)
    return torch.where(inside.unsqueeze(1), torch.randn_like(x), x)
