"""The catalogue: every named FasterNet and every released set of weights, as typed records.

A *variant* (``fasternet_t0`` ... ``fasternet_l``) is an architecture. A *weight record*
(``fasternet_t0.in1k``, ``fasternet_s.maskrcnn_coco_1x``) is one released file: where it is,
what it scored, and the evaluation transform it was scored with, in the spirit of timm's
``name.tag`` and torchvision's ``Weights``. Everything that needs these facts reads them here.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fasternet.models.transforms import EvalTransform

__all__ = ["RELEASE_URL_PREFIX", "Variant", "Weights", "get_variant", "get_weights", "list_models", "list_weights"]

RELEASE_URL_PREFIX = "https://github.com/JierunChen/FasterNet/releases/download/v1.0/"


@dataclasses.dataclass(frozen=True)
class Weights:
    """One released weight file and what is known about it."""

    tag: str  # "fasternet_t0.in1k": the variant name, a dot, the training tag
    file_name: str
    task: str  # "classification" or "detection"
    dataset: str
    num_classes: int
    metrics: Mapping[str, float]  # top1 (ImageNet-1k, crop 0.9) or box_ap / mask_ap (COCO val)
    transform: EvalTransform | None = None  # classification: how the metrics were measured
    detector: str | None = None  # detection: the detector architecture ("maskrcnn")
    hf_hub_id: str | None = None  # where the same weights are on the Hugging Face Hub, if anywhere
    sha256: str | None = None  # not published for the release files
    size: int | None = None
    origin: str = "https://github.com/JierunChen/FasterNet (MIT)"

    @property
    def variant(self) -> str:
        return self.tag.split(".", 1)[0]

    @property
    def url(self) -> str:
        return RELEASE_URL_PREFIX + self.file_name

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named architecture: the arguments of :class:`fasternet.FasterNet` and its default weights."""

    name: str
    model_args: Mapping[str, Any]  # drop_path_rate is the official ImageNet training value
    default_weights: str

    @property
    def weights(self) -> Weights:
        return get_weights(self.default_weights)

    # The release file of the default weights, as the variant was described before weight records.
    @property
    def url(self) -> str:
        return self.weights.url

    @property
    def checkpoint_file(self) -> str:
        return self.weights.file_name

    @property
    def top1(self) -> float | None:
        return self.weights.top1


_VARIANTS: dict[str, Variant] = {}
_WEIGHTS: dict[str, Weights] = {}


def _register_variant(name: str, **model_args: Any) -> None:
    if name in _VARIANTS:
        raise ValueError(f"variant {name!r} is already registered")
    _VARIANTS[name] = Variant(name, MappingProxyType(model_args), f"{name}.in1k")


def _register_weights(weights: Weights) -> None:
    if weights.tag in _WEIGHTS:
        raise ValueError(f"weights {weights.tag!r} are already registered")
    if weights.variant not in _VARIANTS:
        raise ValueError(f"weights {weights.tag!r} name no registered variant")
    _WEIGHTS[weights.tag] = weights


def _imagenet(name: str, file_name: str, top1: float) -> Weights:
    return Weights(
        tag=f"{name}.in1k",
        file_name=file_name,
        task="classification",
        dataset="imagenet-1k",
        num_classes=1000,
        metrics=MappingProxyType({"top1": top1}),
        transform=EvalTransform(224, 0.9),
        hf_hub_id=f"timm/{name}.in1k",
    )


def _coco(name: str, file_name: str, box_ap: float, mask_ap: float) -> Weights:
    return Weights(
        tag=f"{name}.maskrcnn_coco_1x",
        file_name=file_name,
        task="detection",
        dataset="coco-2017",
        num_classes=80,
        metrics=MappingProxyType({"box_ap": box_ap, "mask_ap": mask_ap}),  # paper, Table 4
        detector="maskrcnn",
    )


# name, embed_dim, depths, activation, ImageNet drop path rate (official configs)
_register_variant("fasternet_t0", embed_dim=40, depths=(1, 2, 8, 2), act_layer="gelu", drop_path_rate=0.0)
_register_variant("fasternet_t1", embed_dim=64, depths=(1, 2, 8, 2), act_layer="gelu", drop_path_rate=0.02)
_register_variant("fasternet_t2", embed_dim=96, depths=(1, 2, 8, 2), act_layer="relu", drop_path_rate=0.05)
_register_variant("fasternet_s", embed_dim=128, depths=(1, 2, 13, 2), act_layer="relu", drop_path_rate=0.1)
_register_variant("fasternet_m", embed_dim=144, depths=(3, 4, 18, 3), act_layer="relu", drop_path_rate=0.2)
_register_variant("fasternet_l", embed_dim=192, depths=(3, 4, 18, 3), act_layer="relu", drop_path_rate=0.3)

for _weights in (
    _imagenet("fasternet_t0", "fasternet_t0-epoch.281-val_acc1.71.9180.pth", 71.918),
    _imagenet("fasternet_t1", "fasternet_t1-epoch.291-val_acc1.76.2180.pth", 76.218),
    _imagenet("fasternet_t2", "fasternet_t2-epoch.289-val_acc1.78.8860.pth", 78.886),
    _imagenet("fasternet_s", "fasternet_s-epoch.299-val_acc1.81.2840.pth", 81.284),
    _imagenet("fasternet_m", "fasternet_m-epoch.291-val_acc1.82.9620.pth", 82.962),
    _imagenet("fasternet_l", "fasternet_l-epoch.299-val_acc1.83.5060.pth", 83.506),
    _coco("fasternet_s", "mask_rcnn_fasternet_s_fpn_1x_coco_20221111_063419.pth", 39.9, 36.9),
    _coco("fasternet_m", "mask_rcnn_fasternet_m_fpn_1x_coco_20221107_124408.pth", 43.0, 39.1),
    _coco("fasternet_l", "mask_rcnn_fasternet_l_fpn_1x_coco_20221107_004433.pth", 44.0, 39.9),
):
    _register_weights(_weights)


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint}; available: {', '.join(known)}")


def list_models() -> list[str]:
    """Names of the registered FasterNet variants."""
    return list(_VARIANTS)


def get_variant(name: str) -> Variant:
    """The registry entry of ``name``; a ValueError naming the close matches otherwise."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise _unknown("model", name, list(_VARIANTS)) from None


def list_weights(task: str | None = None) -> list[str]:
    """Tags of the released weights (``fasternet_t0.in1k``, ...), optionally of one task."""
    return [tag for tag, w in _WEIGHTS.items() if task is None or w.task == task]


def get_weights(name: str) -> Weights:
    """The weight record of a tag (``fasternet_s.in1k``), or a variant's default weights."""
    if name in _VARIANTS:
        return _WEIGHTS[_VARIANTS[name].default_weights]
    try:
        return _WEIGHTS[name]
    except KeyError:
        raise _unknown("weights", name, list(_WEIGHTS)) from None
