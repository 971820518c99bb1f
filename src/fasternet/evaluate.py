"""Top-1/top-5 evaluation on an image folder, and top-k prediction on image files."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fasternet.data import EvalTransform, ImageFolder, collate_skipping_failures, load_image
from fasternet.distributed import DistInfo, all_reduce_sum

__all__ = ["EvalResult", "evaluate", "evaluation_folder", "predict", "class_index_map"]

logger = logging.getLogger("fasternet")


@dataclasses.dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    images: int
    skipped: int
    agreement: float | None = None  # percent of images whose top-1 equals the reference model's

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluation_folder(path: str | os.PathLike) -> Path:
    """The folder of class folders to evaluate: ``path`` itself, or ``path/val`` for a train/val root."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {path}")
    children = {p.name for p in path.iterdir() if p.is_dir()}
    if "val" in children and children <= {"train", "val", "test"}:
        return path / "val"
    return path


def class_index_map(dataset_classes: Sequence[str], model_classes: Sequence[str] | None, num_classes: int) -> list[int]:
    """For each folder class, the model's output index (by name when the checkpoint names its classes)."""
    if model_classes is None:
        if len(dataset_classes) > num_classes:
            raise ValueError(f"the data has {len(dataset_classes)} classes, the model only {num_classes}")
        return list(range(len(dataset_classes)))
    lookup = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in dataset_classes if name not in lookup]
    if unknown:
        raise ValueError(f"classes in the data that the model does not know: {', '.join(unknown[:5])}")
    return [lookup[name] for name in dataset_classes]


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: torch.utils.data.DataLoader,
    *,
    device: torch.device,
    label_map: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Top-1/top-5 (percent) over a loader of ``((images, labels), skipped)`` batches.

    With ``reference`` (e.g. the fp32 model when ``model`` is an INT8 runner), also the share of
    images on which both give the same top-1 class.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    correct1 = correct5 = seen = skipped = agree = 0
    mapping = torch.tensor(label_map, device=device) if label_map is not None else None
    for batch, failed in tqdm(loader, desc="eval", leave=False, disable=not progress):
        skipped += failed
        if batch is None:
            continue
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device)
        if mapping is not None:
            labels = mapping[labels]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        if reference is not None:
            agree += int((reference(images).float().argmax(dim=1) == top5[:, 0]).sum())
        hits = top5 == labels.view(-1, 1)
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        seen += labels.numel()
    if dist_info is not None:
        correct1, correct5, seen, skipped = (
            int(v) for v in all_reduce_sum([correct1, correct5, seen, skipped], dist_info)
        )
    if seen == 0:
        raise ValueError("no image could be evaluated (all unreadable?)")
    if skipped:
        logger.warning("%d unreadable images were skipped", skipped)
    agreement = 100.0 * agree / seen if reference is not None else None
    return EvalResult(100.0 * correct1 / seen, 100.0 * correct5 / seen, seen, skipped, agreement)


def make_eval_loader(folder: ImageFolder, *, batch_size: int, workers: int, sampler=None):
    return torch.utils.data.DataLoader(
        folder,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_failures,
        persistent_workers=False,
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    transform: EvalTransform,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
) -> list[list[tuple[str, float]]]:
    """The ``top_k`` (class name, probability) pairs for each image file."""
    model.eval()
    results = []
    for path in paths:
        try:
            image = load_image(path)
        except Exception as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        probs = model(transform(image).unsqueeze(0)).float().softmax(dim=1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        names = class_names or [str(i) for i in range(probs.numel())]
        results.append([(names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)])
    return results


def load_for_inference(checkpoint: str | os.PathLike, model_name: str | None = None):
    """The model a checkpoint holds, its class names, and its evaluation transform settings.

    Files written by this package name their configuration and classes; for others (official
    releases, timm files) ``model_name`` or the tensor shapes tell the architecture.
    """
    import json

    from fasternet.checkpoints import infer_config, load_checkpoint, read_checkpoint
    from fasternet.hub import resolve_checkpoint
    from fasternet.models import FasterNet, create_model, get_variant

    ckpt = read_checkpoint(resolve_checkpoint(checkpoint))
    if model_name is not None:
        get_variant(model_name)
        shapes = infer_config(ckpt.state_dict)
        model = create_model(model_name, num_classes=shapes.get("num_classes", 1000))
        load_checkpoint(model, ckpt)
    else:
        config = ckpt.config or infer_config(ckpt.state_dict)
        if "act_layer" not in config:
            raise ValueError(f"{checkpoint} is not a registered variant: pass --model NAME")
        model = FasterNet(**config)
        load_checkpoint(model, ckpt)
    model.class_names = ckpt.class_names
    meta = ckpt.metadata
    settings = {
        "image_size": int(meta.get("image_size", 224)),
        "crop_pct": float(meta.get("crop_pct", 0.9)),
        "mean": tuple(json.loads(meta["mean"])) if "mean" in meta else None,
        "std": tuple(json.loads(meta["std"])) if "std" in meta else None,
    }
    return model.eval(), settings
