"""Image files as users have them: any mode decoded to RGB, folders of classes, broken files named.

A file that cannot be decoded never ends a run: it comes back as an :class:`Unreadable` record
(path and reason), the batch is built from the others, and the caller reports it once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "Unreadable",
    "collate_skipping_failures",
    "evaluation_folder",
    "expand_image_paths",
    "image_loader",
    "load_image",
    "log_unreadable",
    "read_image",
]

logger = logging.getLogger("fasternet")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """An image file that could not be decoded, and why (the decoder's first line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image as 8-bit RGB: grayscale, palette, RGBA (on white), CMYK and 16-bit too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()  # decode now: a truncated file fails here, inside the caller's try
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        low, high = array.min(), array.max()
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    return image.convert("RGB") if image.mode != "RGB" else image


def read_image(path: str | os.PathLike) -> Image.Image | Unreadable:
    """:func:`load_image`, or an :class:`Unreadable` record instead of an exception."""
    try:
        return load_image(path)
    except Exception as error:  # any decoder failure: PIL raises many types
        lines = str(error).strip().splitlines()
        return Unreadable(str(path), lines[0] if lines else type(error).__name__)


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def expand_image_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder stands for the image files in it (recursively, sorted)."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and _is_image_file(p.name))
        else:
            found.append(path)
    return found


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` with classes sorted by name.

    ``folder[i]`` is ``(transform(image), label)``, or an :class:`Unreadable` record when the
    file cannot be decoded; :func:`collate_skipping_failures` sets those aside.
    """

    def __init__(self, root: str | os.PathLike, *, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{self.root} has no class folders (expected {self.root}/<class>/<image>)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            for dirpath, _, filenames in sorted(os.walk(self.root / name, followlinks=True)):
                for filename in sorted(filenames):
                    if _is_image_file(filename):
                        self.samples.append((os.path.join(dirpath, filename), self.class_to_idx[name]))
        if not self.samples:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | Unreadable:
        path, label = self.samples[index]
        image = read_image(path)
        if isinstance(image, Unreadable):
            return image
        return (self.transform(image) if self.transform else image), label


def collate_skipping_failures(batch: Sequence[Any]) -> tuple[tuple[torch.Tensor, ...] | None, list[Unreadable]]:
    """Stack the decodable samples (None if there is none) and list the unreadable ones."""
    failed = [sample for sample in batch if isinstance(sample, Unreadable)]
    good = [sample for sample in batch if not isinstance(sample, Unreadable)]
    if not good:
        return None, failed
    columns = list(zip(*good, strict=True))
    stacked = tuple(torch.stack(c) if isinstance(c[0], torch.Tensor) else torch.tensor(c) for c in columns)
    return stacked, failed


def evaluation_folder(path: str | os.PathLike) -> Path:
    """The folder of class folders to evaluate: ``path`` itself, or ``path/val`` for a train/val root."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {path}")
    children = {p.name for p in path.iterdir() if p.is_dir()}
    if "val" in children and children <= {"train", "val", "test"}:
        return path / "val"
    return path


def image_loader(
    dataset: torch.utils.data.Dataset, *, batch_size: int, workers: int, sampler: torch.utils.data.Sampler | None = None
) -> torch.utils.data.DataLoader:
    """Batches of ``(tensors, labels)`` in order, unreadable files set aside by :func:`collate_skipping_failures`."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_failures,
        persistent_workers=False,
    )


def log_unreadable(items: Iterable[Unreadable], already: set[str] | None = None) -> int:
    """Name each unreadable file once on the log (``skipped unreadable image PATH: REASON``); how many were new."""
    count = 0
    for item in items:
        if already is not None:
            if item.path in already:
                continue
            already.add(item.path)
        logger.warning("skipped unreadable image %s", item)
        count += 1
    return count
