"""Calibration images for INT8: a fixed random subset of a folder, or any dataset or loader of images.

Shared by every quantizer (OpenVINO/NNCF, onnxruntime, ExecuTorch/XNNPACK, LiteRT). A folder is
read with the model's own evaluation transform; unreadable files are named and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from fasternet.io.images import ImageFolder, Unreadable, collate_skipping_failures, evaluation_folder, log_unreadable
from fasternet.models import EvalTransform

__all__ = ["QuantizationError", "calibration_images"]


class QuantizationError(ValueError):
    """Calibration data that cannot calibrate, or a quantized file that does not belong here."""


def calibration_images(
    calibration: Any, input_size: tuple[int, ...], samples: int, transform: EvalTransform
) -> list[torch.Tensor]:
    """Up to ``samples`` single images (1xCxHxW float tensors) from a folder, dataset or loader."""
    if isinstance(calibration, (str, os.PathLike)):
        try:
            folder = ImageFolder(evaluation_folder(calibration), transform=transform.replace(image_size=input_size[-1]))
        except (FileNotFoundError, ValueError) as error:
            raise QuantizationError(f"calibration data: {error}") from None
        # A fixed random subset: the folder is sorted by class, and its first images are one class.
        order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[: 2 * samples].tolist()
        calibration = torch.utils.data.DataLoader(
            torch.utils.data.Subset(folder, order), batch_size=1, shuffle=False, collate_fn=collate_skipping_failures
        )
    images: list[torch.Tensor] = []
    skipped = 0
    for item in _iterate(calibration):
        if isinstance(item, Unreadable):
            skipped += log_unreadable([item])
            continue
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise QuantizationError(f"calibration data must yield image tensors, got {type(x).__name__}")
        x = x.unsqueeze(0) if x.ndim == 3 else x
        if tuple(x.shape[1:]) != tuple(input_size[1:]):
            raise QuantizationError(
                f"calibration images are {tuple(x.shape[1:])}, the model is quantized for {tuple(input_size[1:])}: "
                "use the model's evaluation transform (or pass input_size=)"
            )
        images.extend(x.float().split(1))
        if len(images) >= samples:
            break
    if not images:
        raise QuantizationError(f"no calibration image could be read ({skipped} unreadable)")
    return images[:samples]


def _iterate(source: Any) -> Iterator[Any]:
    if isinstance(source, torch.utils.data.DataLoader) and source.collate_fn is not None:
        for batch in source:
            if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], list):
                images, unreadable = batch  # from our collate: (batch or None, unreadable files)
                yield from unreadable
                if images is not None:
                    yield images
            else:
                yield batch
        return
    if isinstance(source, torch.utils.data.Dataset) and not isinstance(source, Iterable):
        for i in range(len(source)):
            yield source[i]
        return
    yield from source
