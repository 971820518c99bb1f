"""The evaluation transform: how an image becomes a model input, carried by every set of weights.

Like torchvision's ``Weights.transforms()``, each weight record (and each checkpoint written by
``fasternet train``) carries its own; evaluation, prediction and INT8 calibration read it
instead of hard-coding a crop or a mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "to_uint8_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a 3 x H x W uint8 tensor."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the short side to ``floor(image_size / crop_pct)``, center-crop, normalize.

    The official evaluation at 224 px: bicubic resize to 248, center crop 224, ImageNet mean/std.
    """

    image_size: int = 224
    crop_pct: float = 0.9
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        scale_size = math.floor(self.image_size / self.crop_pct)
        w, h = image.size
        if w <= h:
            size = (scale_size, max(scale_size, round(h * scale_size / w)))
        else:
            size = (max(scale_size, round(w * scale_size / h)), scale_size)
        image = image.resize(size, _INTERPOLATIONS[self.interpolation])
        left = (size[0] - self.image_size) // 2
        top = (size[1] - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        x = to_uint8_tensor(image).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def replace(self, **changes: Any) -> EvalTransform:
        """A copy with some fields changed; ``None`` values keep the current ones."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_metadata(self) -> dict[str, str]:
        """The string fields a checkpoint's metadata stores (the keys ``fasternet train`` has always written)."""
        meta = {
            "image_size": str(self.image_size),
            "crop_pct": str(self.crop_pct),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
        }
        if self.interpolation != "bicubic":
            meta["interpolation"] = self.interpolation
        return meta

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], default: EvalTransform | None = None) -> EvalTransform:
        """The transform a checkpoint's metadata records, field by field over ``default``."""
        base = default or cls()
        return base.replace(
            image_size=int(metadata["image_size"]) if "image_size" in metadata else None,
            crop_pct=float(metadata["crop_pct"]) if "crop_pct" in metadata else None,
            mean=tuple(json.loads(metadata["mean"])) if "mean" in metadata else None,
            std=tuple(json.loads(metadata["std"])) if "std" in metadata else None,
            interpolation=metadata.get("interpolation"),
        )
