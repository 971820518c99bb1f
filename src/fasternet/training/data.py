"""The per-sample part of the training input pipeline (on the CPU workers), and Fashion-MNIST.

What runs here is what must run per image before images can be batched: decoding (PIL, any mode
converted to RGB), the random-resized crop to a fixed size, and the draw of each sample's random
augmentation parameters. Everything else runs batched on the training device
(:mod:`fasternet.training.augment`). Each sample's randomness comes from ``(seed, epoch, index)``,
so a run is reproducible, resumable at any epoch, and independent of the number of processes.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import statistics
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from fasternet.io.images import ImageFolder, Unreadable, read_image
from fasternet.models.transforms import to_uint8_tensor

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SOURCE",
    "EpochSampler",
    "PadCrop",
    "ShardSampler",
    "TrainCrop",
    "TrainingImages",
    "prepare_fashion_mnist",
    "typical_image_side",
]


@dataclasses.dataclass(frozen=True)
class TrainCrop:
    """Random-resized crop (area ``scale``, aspect ``ratio``) to a square, bicubic; uint8 output."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, image: Image.Image, size: int, rng: np.random.Generator) -> torch.Tensor:
        width, height = image.size
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        box = None
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                box = (left, top, left + w, top + h)
                break
        if box is None:  # fall back to a central crop of the allowed aspect ratio
            in_ratio = width / height
            if in_ratio < self.ratio[0]:
                w, h = width, round(width / self.ratio[0])
            elif in_ratio > self.ratio[1]:
                w, h = round(height * self.ratio[1]), height
            else:
                w, h = width, height
            left, top = (width - w) // 2, (height - h) // 2
            box = (left, top, left + w, top + h)
        return to_uint8_tensor(image.resize((size, size), Image.BICUBIC, box=box))


@dataclasses.dataclass(frozen=True)
class PadCrop:
    """Resize to ``size``, pad ``padding`` black pixels around, random ``size`` crop: CIFAR's crop.

    For small images whose object fills the frame (Fashion-MNIST, CIFAR), where a
    random-resized crop of a few pixels throws the object away.
    """

    padding: int = 4

    def __call__(self, image: Image.Image, size: int, rng: np.random.Generator) -> torch.Tensor:
        pixels = to_uint8_tensor(image.resize((size, size), Image.BICUBIC))
        if self.padding == 0:
            return pixels
        padded = torch.nn.functional.pad(pixels, (self.padding,) * 4)
        top, left = (int(v) for v in rng.integers(0, 2 * self.padding + 1, size=2))
        return padded[:, top : top + size, left : left + size].contiguous()


def typical_image_side(folder: ImageFolder, samples: int = 32) -> int | None:
    """The median short side of images spread over the folder (file headers only: fast)."""
    step = max(1, len(folder) // samples)
    sides = []
    for path, _ in folder.samples[::step][:samples]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # an unreadable file is reported when training reaches it
            continue
    return int(statistics.median(sides)) if sides else None


class TrainingImages(torch.utils.data.Dataset):
    """An image folder seen by the training loop: ``(index, epoch, image_size)`` -> a cropped sample.

    Each item is ``(uint8 pixels, label, augmentation parameters)``, drawn from the sample's own
    generator seeded by ``(seed, epoch, index)``, or an :class:`~fasternet.io.images.Unreadable`
    record for a file that cannot be decoded.
    """

    def __init__(
        self,
        folder: ImageFolder,
        *,
        crop: TrainCrop | PadCrop,
        augment_params: Callable[[np.random.Generator], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.folder = folder
        self.crop = crop
        self.augment_params = augment_params
        self.seed = seed

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int, torch.Tensor] | Unreadable:
        index, epoch, size = item
        path, label = self.folder.samples[index]
        image = read_image(path)
        if isinstance(image, Unreadable):
            return image
        rng = np.random.default_rng([self.seed, epoch, index])
        pixels = self.crop(image, size, rng)
        params = self.augment_params(rng) if self.augment_params else torch.zeros(0)
        return pixels, label, params


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled by ``(seed, epoch)``, sharded over ranks; yields ``(index, epoch, image_size)``.

    Rank r takes positions r, r + W, r + 2W, ... of the epoch's order, so batch i of every rank
    together is batch i of a single process with the global batch size: the same images, whatever
    the number of processes. The last incomplete global batch is dropped.
    """

    def __init__(self, num_samples: int, *, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.image_size = 0

    def set_epoch(self, epoch: int, image_size: int = 0) -> None:
        self.epoch = epoch
        self.image_size = image_size

    def _positions(self) -> range:
        stop = self.num_samples // self.global_batch * self.global_batch
        return range(self.rank, stop, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for position in self._positions():
            yield order[position], self.epoch, self.image_size

    def __len__(self) -> int:
        return len(self._positions())


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation over ranks: rank r takes indices r, r + W, ...; every sample is seen exactly once."""

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST as an image folder

FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
FASHION_MNIST_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {found}, expected {magic})")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def prepare_fashion_mnist(
    output: str | os.PathLike,
    *,
    source: str | os.PathLike = FASHION_MNIST_SOURCE,
    train: int | None = None,
    val: int | None = None,
    progress: bool = True,
) -> Path:
    """Write Fashion-MNIST (Debian's ``dataset-fashion-mnist``) as ``output/{train,val}/<class>/*.png``."""
    source = Path(source)
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    output = Path(output)
    for split, (images_name, labels_name) in files.items():
        found = [source / f"{name}{ext}" for name in (images_name, labels_name) for ext in (".gz", "")]
        images_path = next((p for p in found[:2] if p.exists()), None)
        labels_path = next((p for p in found[2:] if p.exists()), None)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {source}; install it with `apt-get install dataset-fashion-mnist` "
                "or pass --source DIR holding the four idx files"
            )
        images, labels = _read_idx(images_path, 2051), _read_idx(labels_path, 2049)
        limit = train if split == "train" else val
        count = len(images) if limit is None else min(limit, len(images))
        for name in FASHION_MNIST_CLASSES:
            (output / split / name).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(count), desc=f"fashion-mnist {split}", disable=not progress, leave=False):
            path = output / split / FASHION_MNIST_CLASSES[labels[i]] / f"{i:05d}.png"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                Image.fromarray(images[i]).save(tmp, format="PNG")
                os.replace(tmp, path)
    return output
