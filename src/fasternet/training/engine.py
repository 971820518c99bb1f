"""One epoch of training and one pass of evaluation, as plain functions (like ConvNeXt's engine.py).

:func:`train_one_epoch` steps the model over a loader; :func:`evaluate` measures top-1/top-5 of
any callable (the model, or a runner in another precision) over a loader of image batches.
Set-up, resume and checkpoints are :mod:`fasternet.training.run`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fasternet.io.images import Unreadable
from fasternet.training.augment import BatchAugment
from fasternet.training.distributed import DistInfo, all_reduce_sum
from fasternet.training.ema import ModelEma
from fasternet.training.loss import soft_target_cross_entropy

__all__ = ["EpochStats", "EvalResult", "class_index_map", "evaluate", "train_one_epoch"]

logger = logging.getLogger("fasternet")


@dataclasses.dataclass
class EpochStats:
    """What one process saw in one training epoch."""

    loss_sum: float = 0.0  # sum over samples of the loss
    images: int = 0
    unreadable: list[Unreadable] = dataclasses.field(default_factory=list)
    data_wait: float = 0.0  # seconds spent waiting for the loader
    seconds: float = 0.0
    nonfinite_steps: int = 0  # batches whose loss was NaN or infinite: skipped, not stepped


def _all_finite(loss: torch.Tensor, dist_info: DistInfo | None) -> bool:
    """Whether the loss is finite on every process (they must skip the same steps, or DDP hangs)."""
    finite = torch.isfinite(loss.detach()).to(torch.float64).reshape(1)
    if dist_info is not None and dist_info.enabled:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    augment: BatchAugment,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    autocast_dtype: torch.dtype | None,
    clip_grad: float | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: ModelEma | None = None,
    memory_format: torch.memory_format = torch.channels_last,
    dist_info: DistInfo | None = None,
    max_nonfinite: int = 20,
    progress: tqdm | None = None,
) -> EpochStats:
    """Forward, soft-target cross-entropy, backward and an optimizer step for every batch.

    ``scheduler`` (per-step schedules) steps after every batch; ``ema`` updates after every
    optimizer step. A batch whose loss is not finite is skipped and counted; ``max_nonfinite``
    of them in a row stop the run with FloatingPointError.
    """
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    world_size = dist_info.world_size if dist_info is not None else 1
    stats = EpochStats()
    in_a_row = 0
    started = fetch_start = time.perf_counter()
    for batch, failed in loader:
        stats.data_wait += time.perf_counter() - fetch_start
        stats.unreadable += failed
        if batch is None:
            fetch_start = time.perf_counter()
            continue
        images, labels, params = (t.to(device, non_blocking=True) for t in batch)
        x, targets = augment(images, labels, params)
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        loss = soft_target_cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if _all_finite(loss, dist_info):
            in_a_row = 0
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(parameters, clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
            stats.loss_sum += loss.item() * labels.numel()
            stats.images += labels.numel()
        else:
            stats.nonfinite_steps += 1
            in_a_row += 1
            if in_a_row >= max_nonfinite:
                raise FloatingPointError(
                    f"the loss was not finite for {in_a_row} batches in a row; lower the learning rate "
                    "(or check the data, or turn AMP off with --amp off)"
                )
        if scheduler is not None:
            scheduler.step()
        if progress is not None:
            seen = max(stats.images, 1)
            throughput = stats.images * world_size / (time.perf_counter() - started)
            postfix = {"loss": f"{stats.loss_sum / seen:.4f}", "lr": f"{optimizer.param_groups[0]['lr']:.2e}"}
            postfix["img_s"] = f"{throughput:.0f}"
            if stats.nonfinite_steps:
                postfix["skipped_nan"] = str(stats.nonfinite_steps)
            progress.set_postfix(postfix)
            progress.update()
        fetch_start = time.perf_counter()
    stats.seconds = time.perf_counter() - started
    return stats


@dataclasses.dataclass
class EvalResult:
    """Top-1/top-5 in percent over the images that could be read."""

    top1: float
    top5: float
    images: int
    skipped: int
    agreement: float | None = None  # percent of images whose top-1 equals the reference model's
    unreadable: list[Unreadable] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result["unreadable"] = [{"path": u.path, "reason": u.reason} for u in self.unreadable]
        return result


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
    """Top-1/top-5 (percent) over a loader of ``(images, labels)`` batches from an image folder.

    With ``reference`` (e.g. the fp32 model when ``model`` is an INT8 runner), also the share of
    images on which both give the same top-1 class. Under torchrun the counts of every process
    are summed (each process lists only its own unreadable files).
    """
    if isinstance(model, nn.Module):
        model.eval()
    correct1 = correct5 = seen = agree = 0
    unreadable: list[Unreadable] = []
    mapping = torch.tensor(label_map, device=device) if label_map is not None else None
    for batch, failed in tqdm(loader, desc="eval", leave=False, disable=not progress):
        unreadable += failed
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
    skipped = len(unreadable)
    if dist_info is not None:
        correct1, correct5, seen, skipped = (
            int(v) for v in all_reduce_sum([correct1, correct5, seen, skipped], dist_info)
        )
    if seen == 0:
        raise ValueError(f"no image could be evaluated ({skipped} unreadable)")
    agreement = 100.0 * agree / seen if reference is not None else None
    return EvalResult(100.0 * correct1 / seen, 100.0 * correct5 / seen, seen, skipped, agreement, unreadable)


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
