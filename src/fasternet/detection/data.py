"""COCO-format detection data: reading it for training, and writing the two demo sets.

``prepare_trees`` turns the aerial tree-crown images and Pascal-VOC boxes that the ``deepforest``
2.1.0 wheel ships into a COCO set; ``prepare_nuclei`` does the same for the fluorescence image
and instance labels of the ``stardist`` 0.9.2 wheel. Both read a folder or the wheel itself (a
zip file: ``pip download deepforest==2.1.0 --no-deps``); nothing else of those packages is used.
Masks are stored as uncompressed COCO RLE; polygons are read too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from fasternet.io.images import Unreadable, read_image

__all__ = ["CocoDetection", "collate_detection", "decode_segmentation", "encode_rle", "prepare_nuclei", "prepare_trees"]

logger = logging.getLogger("fasternet")

TREE_FILES = ("OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop")


# --------------------------------------------------------------------------------------------
# Masks in COCO form


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a binary mask: run lengths in column-major order, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    previous = np.concatenate(([0], flat[:-1]))
    starts = np.flatnonzero(flat != previous)  # where each run after the first begins
    counts = np.diff(np.concatenate(([0], starts, [flat.size])))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A binary mask from uncompressed RLE or polygons (compressed RLE needs pycocotools)."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, str):
            try:
                from pycocotools import mask as mask_utils
            except ImportError:
                raise ValueError("compressed RLE masks need pycocotools: pip install pycocotools") from None
            return mask_utils.decode(segmentation).astype(bool)
        flat = np.zeros(height * width, dtype=bool)
        position, value = 0, False
        for count in counts:
            if value:
                flat[position : position + count] = True
            position += count
            value = not value
        return flat.reshape((height, width), order="F")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        if len(polygon) >= 6:
            draw.polygon(list(map(float, polygon)), outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


# --------------------------------------------------------------------------------------------
# Reading the source files (a folder or a wheel)


class _Source:
    """Files by name in a folder or in a wheel (zip), wherever they sit inside it."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{what} source not found: {self.path}")
        if self.path.is_dir():
            self.names = {p.name: p for p in self.path.rglob("*") if p.is_file()}
            self.archive = None
        elif zipfile.is_zipfile(self.path):
            self.archive = zipfile.ZipFile(self.path)
            self.names = {Path(n).name: n for n in self.archive.namelist() if not n.endswith("/")}
        else:
            raise ValueError(f"{self.path} is neither a folder nor a wheel (zip file)")

    def read(self, name: str) -> bytes:
        if name not in self.names:
            raise FileNotFoundError(f"{name} not found in {self.path}")
        if self.archive is None:
            return self.names[name].read_bytes()
        return self.archive.read(self.names[name])


def _tiles(size: int, tile: int) -> list[tuple[int, int]]:
    """(start, length) of ceil(size / tile) equal, non-overlapping tiles covering ``size``.

    Non-overlapping, so that no object appears in both a training and a validation tile.
    """
    count = max(1, -(-size // tile))
    edges = [round(i * size / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(count)]


def _write_coco(output: Path, split: str, images: list[dict], annotations: list[dict], categories: list[str]) -> None:
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }
    tmp = output / f".{split}.json.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, output / f"{split}.json")


def _split(names: list[str], val_fraction: float, seed: int) -> set[str]:
    ordered = sorted(names)
    random.Random(seed).shuffle(ordered)
    count = max(1, round(len(ordered) * val_fraction))
    return set(ordered[:count])


def _write_sets(
    output: Path,
    records: list[tuple[str, np.ndarray, list[dict]]],
    categories: list[str],
    val_fraction: float,
    seed: int,
) -> None:
    """Save each (file name, image, annotations) record and write train.json / val.json.

    The validation images are a seeded random ``val_fraction`` of the records; annotations get
    their ``id`` and ``image_id`` here.
    """
    val_names = _split([name for name, _, _ in records], val_fraction, seed)
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    for image_id, (name, image, objects) in enumerate(records, start=1):
        Image.fromarray(image).save(output / "images" / name)
        images, annotations = splits["val" if name in val_names else "train"]
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": f"images/{name}", "width": width, "height": height})
        for annotation in objects:
            annotations.append({"id": len(annotations) + 1 + 100000 * image_id, "image_id": image_id, **annotation})
    for split, (images, annotations) in splits.items():
        _write_coco(output, split, images, annotations, categories)


def prepare_trees(
    output: str | os.PathLike,
    *,
    source: str | os.PathLike,
    tile: int = 400,
    val_fraction: float = 0.25,
    seed: int = 0,
    keep_labels: bool = False,
) -> Path:
    """Aerial tree crowns as COCO: images cut into tiles of at most ``tile`` px, boxes clipped, train/val by tile.

    All boxes are one class, "tree", unless ``keep_labels`` keeps the VOC names (Tree/Alive/Dead).
    """
    files = _Source(source, "trees")
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    records: list[tuple[str, np.ndarray, list[tuple[str, list[float]]]]] = []
    for stem in TREE_FILES:
        image = Image.open(io.BytesIO(files.read(f"{stem}.png"))).convert("RGB")
        root = ElementTree.fromstring(files.read(f"{stem}.xml"))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            coords = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((obj.find("name").text if keep_labels else "tree", coords))
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        for y0, tile_h in _tiles(height, tile):
            for x0, tile_w in _tiles(width, tile):
                crop = pixels[y0 : y0 + tile_h, x0 : x0 + tile_w]
                boxes = []
                for label, (x1, y1, x2, y2) in objects:
                    cx1, cy1 = max(x1, x0), max(y1, y0)
                    cx2, cy2 = min(x2, x0 + crop.shape[1]), min(y2, y0 + crop.shape[0])
                    if cx2 <= cx1 or cy2 <= cy1:
                        continue
                    if (cx2 - cx1) * (cy2 - cy1) < 0.5 * (x2 - x1) * (y2 - y1):
                        continue  # mostly outside this tile: it belongs to a neighbour
                    boxes.append((label, [cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0]))
                name = f"{stem}_{y0}_{x0}.png" if (height > tile or width > tile) else f"{stem}.png"
                records.append((name, crop, boxes))
    categories = sorted({label for _, _, boxes in records for label, _ in boxes})
    annotated = [
        (name, crop, [_box_annotation(box, categories.index(label) + 1) for label, box in boxes])
        for name, crop, boxes in records
    ]
    _write_sets(output, annotated, categories, val_fraction, seed)
    return output


def _box_annotation(box: list[float], category_id: int) -> dict:
    x1, y1, x2, y2 = box
    return {"category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}


def prepare_nuclei(
    output: str | os.PathLike,
    *,
    source: str | os.PathLike,
    tile: int = 128,
    val_fraction: float = 0.25,
    seed: int = 0,
    min_area: int = 16,
) -> Path:
    """Nuclei instance masks as COCO: the 16-bit image scaled to 8-bit RGB, tiles, RLE masks."""
    files = _Source(source, "nuclei")
    image = np.asarray(Image.open(io.BytesIO(files.read("img2d.tif"))), dtype=np.float64)
    labels = np.asarray(Image.open(io.BytesIO(files.read("mask2d.tif"))))
    low, high = np.percentile(image, [1, 99.8])
    scaled = np.clip((image - low) / max(high - low, 1e-9), 0, 1)
    rgb = np.repeat((scaled * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    height, width = labels.shape
    records = []
    for y0, tile_h in _tiles(height, tile):
        for x0, tile_w in _tiles(width, tile):
            crop_labels = labels[y0 : y0 + tile_h, x0 : x0 + tile_w]
            instances = []
            for value in np.unique(crop_labels):
                if value == 0:
                    continue
                mask = crop_labels == value
                if mask.sum() < min_area:
                    continue  # a sliver of a nucleus cut by the tile border
                ys, xs = np.nonzero(mask)
                instances.append((mask, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
            records.append((f"nuclei_{y0}_{x0}.png", rgb[y0 : y0 + tile_h, x0 : x0 + tile_w], instances))
    annotated = [
        (name, crop, [_box_annotation(box, 1) | {"area": float(mask.sum()), "segmentation": encode_rle(mask)}
                      for mask, box in instances])
        for name, crop, instances in records
    ]  # fmt: skip
    _write_sets(output, annotated, ["nucleus"], val_fraction, seed)
    return output


# --------------------------------------------------------------------------------------------
# Reading COCO for training


class CocoDetection(torch.utils.data.Dataset):
    """Images and targets of a COCO json: boxes (xyxy), labels (1..K), masks, image_id.

    Category ids are mapped to contiguous labels 1..K in the order of the json's categories;
    ``class_names`` holds their names. An image that cannot be read comes back as an
    :class:`~fasternet.io.images.Unreadable` record.
    """

    def __init__(
        self, annotations: str | os.PathLike, *, image_root: str | os.PathLike | None = None, masks: bool = True
    ) -> None:
        path = Path(annotations)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotations not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{path} is not COCO detection data: no '{key}'")
        self.root = Path(image_root) if image_root is not None else path.parent
        self.images = sorted(data["images"], key=lambda image: image["id"])
        self.categories = data["categories"]
        self.class_names = [c["name"] for c in self.categories]
        self.label_of = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.by_image: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for annotation in data["annotations"]:
            if annotation["image_id"] in self.by_image and not annotation.get("iscrowd", 0):
                self.by_image[annotation["image_id"]].append(annotation)
        self.masks = masks
        self.coco = data

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> dict[str, torch.Tensor]:
        info = self.images[index]
        boxes, labels, masks = [], [], []
        for annotation in self.by_image[info["id"]]:
            x, y, w, h = annotation["bbox"]
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[annotation["category_id"]])
            if self.masks:
                segmentation = annotation.get("segmentation")
                if segmentation:
                    masks.append(decode_segmentation(segmentation, info["height"], info["width"]))
                else:  # a box-only annotation in a mask task: the box is its mask
                    mask = np.zeros((info["height"], info["width"]), dtype=bool)
                    mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
                    masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(info["id"]),
        }
        if self.masks:
            target["masks"] = (
                torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros((0, info["height"], info["width"]), dtype=torch.bool)
            )
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | Unreadable:
        info = self.images[index]
        image = read_image(self.root / info["file_name"])
        if isinstance(image, Unreadable):
            return image
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return x, self.target(index)


def collate_detection(batch: list) -> tuple[list, list, list[Unreadable]]:
    """Lists of images and targets (detectors take lists), and the unreadable files."""
    good = [item for item in batch if not isinstance(item, Unreadable)]
    failed = [item for item in batch if isinstance(item, Unreadable)]
    return [image for image, _ in good], [target for _, target in good], failed
