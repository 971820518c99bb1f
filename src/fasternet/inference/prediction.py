"""Top-k classes of image files, answering every file it can read and naming the ones it cannot."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import torch

from fasternet.io.images import Unreadable, expand_image_paths, read_image
from fasternet.models import EvalTransform

__all__ = ["Prediction", "predict"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's answer: the top classes with their probabilities, or why it could not be read."""

    path: str
    top: list[tuple[str, float]]  # (class name, probability), most probable first; empty if unreadable
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if not self.ok:
            return {"image": self.path, "error": self.error}
        return {"image": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


@torch.no_grad()
def predict(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: Iterable[str | os.PathLike],
    *,
    transform: EvalTransform | None = None,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
) -> list[Prediction]:
    """The ``top_k`` classes of each image file (a folder stands for the images in it).

    ``transform`` and ``class_names`` default to the model's own (``model.eval_transform``,
    ``model.class_names``). An unreadable file gives a :class:`Prediction` with ``error`` set;
    the others are answered all the same.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    transform = transform or getattr(model, "eval_transform", None) or EvalTransform()
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    results = []
    for path in expand_image_paths(images):
        image = read_image(path)
        if isinstance(image, Unreadable):
            results.append(Prediction(str(path), [], f"cannot read image {image}"))
            continue
        probs = model(transform(image).unsqueeze(0)).float().softmax(dim=1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        labels = names or [str(i) for i in range(probs.numel())]
        top = [(labels[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
        results.append(Prediction(str(path), top))
    return results
