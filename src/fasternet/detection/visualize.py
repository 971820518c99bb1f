"""Drawing detections: boxes, translucent masks and labels on the image, with PIL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["draw_detections"]

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def draw_detections(
    image: Image.Image,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str],
    masks: torch.Tensor | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """A copy of ``image`` with each detection's mask (tinted), box and "class score" label."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    colors = [_PALETTE[int(label) % len(_PALETTE)] for label in labels]
    if masks is not None:
        for mask, color in zip(masks.cpu().numpy().astype(bool), colors, strict=True):
            canvas[mask] = canvas[mask] * (1 - alpha) + np.array(color, dtype=np.float32) * alpha
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for box, label, score, color in zip(boxes.tolist(), labels.tolist(), scores.tolist(), colors, strict=True):
        draw.rectangle(box, outline=color, width=2)
        text = f"{class_names[int(label) - 1]} {score:.2f}"
        left, top = box[0], max(0, box[1] - 11)
        draw.rectangle([left, top, left + 6 * len(text) + 2, top + 11], fill=color)
        draw.text((left + 1, top), text, fill=(0, 0, 0))
    return result
