"""Saving and rebuilding detectors: safetensors with the detector's configuration in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from fasternet._utils import atomic_write
from fasternet.detection.models import create_detector
from fasternet.io.checkpoints import CheckpointError

__all__ = ["load_detector", "save_detector"]

FORMAT = "fasternet-detector"


def save_detector(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Weights and configuration (architecture, backbone, classes, test settings), written atomically."""
    config = dict(getattr(model, "fasternet_config", None) or {})
    if not config:
        raise ValueError("save_detector() takes a detector from create_detector() or load_mmdet()")
    names = class_names or getattr(model, "class_names", None)
    meta = {"format": FORMAT, "config": json.dumps(config), **(metadata or {})}
    if names is not None:
        meta["class_names"] = json.dumps(list(names))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, save(tensors, metadata=meta))


def load_detector(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """The detector a file from :func:`save_detector` describes, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"detector checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fasternet detector (convert mmdet files with `fasternet convert-mmdet`)"
        )
    config = json.loads(meta["config"])
    options = {
        "min_size": config["min_size"],
        "max_size": config["max_size"],
        "trainable_stages": config["trainable_stages"],
        "norm_eval": config["norm_eval"],
        **config["torchvision_kwargs"],
        **overrides,
    }
    model = create_detector(config["arch"], backbone=config["backbone"], num_classes=config["num_classes"], **options)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit its own configuration: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.class_names = json.loads(meta["class_names"]) if "class_names" in meta else None
    return model.eval()
