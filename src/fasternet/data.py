"""Image folders, decoding, and the per-sample parts of the input pipeline (on the CPU workers).

What runs here is what must run per image before images can be batched: decoding (PIL, any mode
converted to RGB), the random-resized crop to a fixed size, and the draw of each sample's random
augmentation parameters. Everything else runs batched on the training device
(:mod:`fasternet.augment`). Each sample's randomness comes from ``(seed, epoch, index)``, so a
run is reproducible, resumable at any epoch, and independent of the number of processes.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochSampler",
    "EvalTransform",
    "ImageFolder",
    "TrainCrop",
    "collate_skipping_failures",
    "load_image",
    "prepare_fashion_mnist",
]

logger = logging.getLogger("fasternet")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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


def _to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the short side to ``floor(image_size / crop_pct)`` (bicubic), center-crop, normalize."""

    image_size: int = 224
    crop_pct: float = 0.9
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        scale_size = math.floor(self.image_size / self.crop_pct)
        w, h = image.size
        if w <= h:
            size = (scale_size, max(scale_size, round(h * scale_size / w)))
        else:
            size = (max(scale_size, round(w * scale_size / h)), scale_size)
        image = image.resize(size, Image.BICUBIC)
        left = (size[0] - self.image_size) // 2
        top = (size[1] - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        x = _to_uint8_tensor(image).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


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
        return _to_uint8_tensor(image.resize((size, size), Image.BICUBIC, box=box))


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` with classes sorted by name; unreadable images are skipped.

    ``__getitem__`` takes an index, or the ``(index, epoch, image_size)`` triple that
    :class:`EpochSampler` yields for training. A sample that cannot be decoded comes back as
    ``None`` with a warning; :func:`collate_skipping_failures` drops it and counts it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform: Any = None,
        train_crop: TrainCrop | None = None,
        augment_params: Any = None,
        seed: int = 0,
    ) -> None:
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
                    if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                        self.samples.append((os.path.join(dirpath, filename), self.class_to_idx[name]))
        if not self.samples:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.transform = transform
        self.train_crop = train_crop
        self.augment_params = augment_params
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple | None:
        index, epoch, size = item if isinstance(item, tuple) else (item, 0, 0)
        path, label = self.samples[index]
        try:
            image = load_image(path)
        except Exception as e:  # any decoder failure: skip the image, never the run
            logger.warning("skipping unreadable image %s (%s)", path, str(e).splitlines()[0] if str(e) else e)
            return None
        if self.train_crop is None:
            return self.transform(image) if self.transform else image, label
        rng = np.random.default_rng([self.seed, epoch, index])
        pixels = self.train_crop(image, size, rng)
        params = self.augment_params(rng) if self.augment_params else torch.zeros(0)
        return pixels, label, params


def collate_skipping_failures(batch: list) -> tuple | None:
    """Stack the decodable samples; the last element is the number of skipped ones."""
    good = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, skipped
    columns = list(zip(*good, strict=True))
    stacked = [torch.stack(c) if isinstance(c[0], torch.Tensor) else torch.tensor(c) for c in columns]
    return tuple(stacked), skipped


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled by ``(seed, epoch)`` and sharded over ranks; yields ``(index, epoch, image_size)``.

    Rank r takes positions r, r + W, r + 2W, ... of the epoch's order, so batch i of every rank
    together is batch i of a single process with the global batch size: the same images, whatever
    the number of processes. With ``global_batch`` (training) the last incomplete global batch is
    dropped; without it (evaluation) every sample is visited exactly once over all ranks.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        global_batch: int | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.global_batch = global_batch
        self.epoch = 0
        self.image_size = 0

    def set_epoch(self, epoch: int, image_size: int = 0) -> None:
        self.epoch = epoch
        self.image_size = image_size

    def _stop(self) -> int:
        if self.global_batch:
            return self.num_samples // self.global_batch * self.global_batch
        return self.num_samples

    def __iter__(self) -> Iterator[Any]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for position in range(self.rank, self._stop(), self.world_size):
            yield (order[position], self.epoch, self.image_size) if self.image_size else order[position]

    def __len__(self) -> int:
        return len(range(self.rank, self._stop(), self.world_size))


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
    from tqdm.auto import tqdm

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
