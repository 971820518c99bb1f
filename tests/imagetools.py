"""Small real image files for tests: every mode a user's folder may hold, and broken ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def color_image(rng: np.random.Generator, label: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    """A noisy image whose dominant channel is the label: learnable in a few steps."""
    pixels = rng.integers(0, 90, (size[1], size[0], 3))
    pixels[..., label % 3] += 150
    return Image.fromarray(pixels.astype(np.uint8))


def make_folder(root: Path, *, classes: int = 3, per_class: int = 8, seed: int = 0, size=(40, 36)) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color_image(rng, c, size).save(folder / f"{i:03d}.png")
    return root


def make_dataset(root: Path, *, classes: int = 3, train: int = 8, val: int = 4, size=(40, 36)) -> Path:
    make_folder(root / "train", classes=classes, per_class=train, seed=1, size=size)
    make_folder(root / "val", classes=classes, per_class=val, seed=2, size=size)
    return root


def write_awkward_images(folder: Path) -> dict[str, bool]:
    """Images in unusual modes (readable) and broken files (unreadable); name -> readable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    base = color_image(rng, 0, (48, 40))
    base.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    base.convert("L").save(folder / "gray.png")
    base.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (20, 24))).astype(np.uint16)).save(folder / "sixteen_bit.png")
    base.resize((8, 8)).save(folder / "tiny.png")
    buffer = io.BytesIO()
    base.save(buffer, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "not_an_image.jpg").write_text("this is a text file with an image name\n")
    return {
        "cmyk.jpg": True,
        "gray.png": True,
        "palette.png": True,
        "rgba.png": True,
        "sixteen_bit.png": True,
        "tiny.png": True,
        "truncated.jpg": False,
        "not_an_image.jpg": False,
    }
