"""The architecture and the catalogue: FasterNet, its registered variants and their weights.

Imports nothing above it: no checkpoint reading, no downloads (see :mod:`fasternet.builder`).
"""

from fasternet.models.fasternet import FasterNet, FasterNetStage
from fasternet.models.registry import Variant, Weights, get_variant, get_weights, list_models, list_weights
from fasternet.models.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "FasterNet",
    "FasterNetStage",
    "Variant",
    "Weights",
    "get_variant",
    "get_weights",
    "list_models",
    "list_weights",
]
