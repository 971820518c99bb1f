"""Training with the paper's ImageNet recipe, from one CPU to many GPUs, and crash-safe.

Single process::

    fasternet train --model fasternet_t0 --data ROOT --output runs/t0

Distributed data parallel (gloo on CPUs, nccl on GPUs)::

    torchrun --nproc_per_node=8 -m fasternet train --model fasternet_t0 --data ROOT --output runs/t0

``--batch-size`` is the global batch, split over the processes; the learning rate follows the
paper's rule ``lr = 0.001 * batch / 1024`` unless ``--lr`` is given. After every epoch the
output folder holds ``last.pt`` (everything needed to resume), ``best.safetensors`` (the
weights with the best validation top-1, with configuration and class names) and ``log.jsonl``.
Each file is written to a temporary name and renamed: a kill at any moment leaves the previous
good files. ``--resume`` continues after the last completed epoch, with the same result as an
uninterrupted run (every random choice derives from ``(seed, epoch)``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fasternet.augment import BatchAugment, Mixup, RandAugmentSpec, SampleParams, soft_target_cross_entropy
from fasternet.checkpoints import save_checkpoint
from fasternet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    EvalTransform,
    ImageFolder,
    TrainCrop,
    collate_skipping_failures,
)
from fasternet.distributed import DistInfo, all_reduce_sum, convert_sync_batchnorm, init_distributed
from fasternet.evaluate import evaluate, make_eval_loader
from fasternet.models import create_model, get_variant
from fasternet.runstate import atomic_torch_save, atomic_write_text, load_resume_state, rng_state, seed_epoch

__all__ = ["RECIPES", "Recipe", "TrainConfig", "lr_at_epoch", "train"]

logger = logging.getLogger("fasternet")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The official ImageNet-1k training recipe of one variant (paper, Table 8 and configs)."""

    global_batch: int
    lr: float
    weight_decay: float
    clip_grad: float | None
    drop_path_rate: float
    randaugment: str | None
    mixup: float
    epochs: int = 300
    warmup_epochs: int = 20
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    image_size: int = 224
    early_image_size: int = 192  # progressive resolution: this size until the last `late_epochs`
    late_epochs: int = 20
    crop_scale: float = 0.08  # random-resized-crop area range (crop_scale, 1)
    crop_pct: float = 0.9  # evaluation: resize to image_size / crop_pct, center crop
    amp: str = "fp16"


RECIPES: dict[str, Recipe] = {
    "fasternet_t0": Recipe(4096, 0.004, 0.005, None, 0.0, None, 0.05),
    "fasternet_t1": Recipe(4096, 0.004, 0.01, None, 0.02, "rand-m3-mstd0.5-inc1", 0.1),
    "fasternet_t2": Recipe(4096, 0.004, 0.02, None, 0.05, "rand-m5-mstd0.5-inc1", 0.1),
    "fasternet_s": Recipe(4096, 0.004, 0.03, None, 0.1, "rand-m7-mstd0.5-inc1", 0.3),
    "fasternet_m": Recipe(2048, 0.002, 0.05, 1.0, 0.2, "rand-m7-mstd0.5-inc1", 0.5),
    "fasternet_l": Recipe(2048, 0.002, 0.05, 0.01, 0.3, "rand-m7-mstd0.5-inc1", 0.7),
}


@dataclasses.dataclass
class TrainConfig:
    """What ``fasternet train`` was asked for; ``None`` means "the variant's recipe value"."""

    model: str
    data: str
    output: str
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    early_image_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    mixup: float | None = None
    cutmix: float | None = None
    label_smoothing: float | None = None
    randaugment: str | None = None  # "none" disables it
    drop_path_rate: float | None = None
    clip_grad: float | None = None  # 0 disables it
    crop_scale: float | None = None
    crop_pct: float | None = None
    amp: str = "auto"
    workers: int | None = None
    pretrained: str | None = None
    num_classes: int | None = None
    resume: bool = False
    seed: int = 0
    sync_bn: bool = False
    device: str | None = None
    channels_last: bool = True
    progress: bool = True

    def resolve(self) -> dict[str, Any]:
        """The concrete settings of this run: recipe values with the given flags on top."""
        recipe = RECIPES[get_variant(self.model).name]
        pick = lambda value, default: default if value is None else value  # noqa: E731
        batch = pick(self.batch_size, recipe.global_batch)
        image_size = pick(self.image_size, recipe.image_size)
        randaugment = pick(self.randaugment, recipe.randaugment)
        settings = dict(
            model=self.model,
            epochs=pick(self.epochs, recipe.epochs),
            batch_size=batch,
            lr=pick(self.lr, 0.001 * batch / 1024),
            weight_decay=pick(self.weight_decay, recipe.weight_decay),
            warmup_epochs=pick(self.warmup_epochs, recipe.warmup_epochs),
            warmup_lr=recipe.warmup_lr,
            min_lr=recipe.min_lr,
            mixup=pick(self.mixup, recipe.mixup),
            cutmix=pick(self.cutmix, recipe.cutmix),
            mixup_switch_prob=recipe.mixup_switch_prob,
            label_smoothing=pick(self.label_smoothing, recipe.label_smoothing),
            randaugment=None if randaugment in (None, "none", "") else randaugment,
            drop_path_rate=pick(self.drop_path_rate, recipe.drop_path_rate),
            clip_grad=pick(self.clip_grad, recipe.clip_grad) or None,
            image_size=image_size,
            early_image_size=pick(
                self.early_image_size, recipe.early_image_size if image_size == recipe.image_size else image_size
            ),
            late_epochs=recipe.late_epochs,
            crop_scale=pick(self.crop_scale, recipe.crop_scale),
            crop_pct=pick(self.crop_pct, recipe.crop_pct),
            seed=self.seed,
            sync_bn=self.sync_bn,
            pretrained=self.pretrained,
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
        )
        if settings["randaugment"]:
            RandAugmentSpec.parse(settings["randaugment"])  # fail early on a bad spec
        return settings


def lr_at_epoch(epoch: int, s: dict[str, Any]) -> float:
    """Linear warm-up from ``warmup_lr``, then cosine to ``min_lr``; stepped per epoch."""
    if epoch < s["warmup_epochs"]:
        return s["warmup_lr"] + (s["lr"] - s["warmup_lr"]) * epoch / s["warmup_epochs"]
    span = max(1, s["epochs"] - s["warmup_epochs"])
    progress = min(1.0, (epoch - s["warmup_epochs"]) / span)
    return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * progress))


def image_size_at_epoch(epoch: int, s: dict[str, Any]) -> int:
    return s["image_size"] if epoch >= s["epochs"] - s["late_epochs"] else s["early_image_size"]


def _autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else None
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"--amp must be bf16, fp16, off or auto, got {amp!r}")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _check_folders(data: Path) -> tuple[Path, Path]:
    train_dir, val_dir = data / "train", data / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: --data must hold train/ and val/ image folders")
    return train_dir, val_dir


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run; returns the last epoch's log record."""
    info = init_distributed(config.device)
    try:
        return _train(config, info)
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, info: DistInfo) -> dict[str, Any]:
    s = config.resolve()
    output = Path(config.output)
    last_path, best_path, log_path = output / "last.pt", output / "best.safetensors", output / "log.jsonl"
    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
    if s["batch_size"] % info.world_size:
        raise ValueError(f"--batch-size {s['batch_size']} is not divisible by the {info.world_size} processes")
    local_batch = s["batch_size"] // info.world_size
    device = info.device

    train_dir, val_dir = _check_folders(Path(config.data))
    randaugment = RandAugmentSpec.parse(s["randaugment"]) if s["randaugment"] else None
    sample_params = SampleParams(randaugment)
    train_set = ImageFolder(
        train_dir, train_crop=TrainCrop(scale=(s["crop_scale"], 1.0)), augment_params=sample_params, seed=s["seed"]
    )
    val_set = ImageFolder(val_dir, transform=EvalTransform(s["image_size"], s["crop_pct"], s["mean"], s["std"]))
    if val_set.classes != train_set.classes:
        raise ValueError("train/ and val/ must have the same class folders")
    num_classes = len(train_set.classes)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"--num-classes {config.num_classes} but the data has {num_classes} class folders")
    if len(train_set) < s["batch_size"]:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {s['batch_size']}")

    torch.manual_seed(s["seed"])
    model = create_model(
        config.model, num_classes=num_classes, drop_path_rate=s["drop_path_rate"], pretrained=s["pretrained"] or False
    )
    model.class_names = train_set.classes
    if s["sync_bn"] and info.enabled:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.999), weight_decay=s["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_at_epoch(epoch, s) / s["lr"])
    autocast_dtype = _autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    start_epoch, best_top1, history = 0, -1.0, []
    if config.resume and last_path.exists():
        stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        state, history = load_resume_state(last_path, log_path, s, stateful)
        start_epoch, best_top1 = state["epoch"], state["best_top1"]
        if info.is_main:
            logger.info("resuming %s after epoch %d", output, start_epoch)
    elif config.resume and info.is_main:
        logger.info("--resume: no %s yet, starting from scratch", last_path)

    ddp_model = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    augment = BatchAugment(
        mean=s["mean"],
        std=s["std"],
        randaugment=randaugment,
        mixup=Mixup(s["mixup"], s["cutmix"], s["mixup_switch_prob"], s["label_smoothing"], num_classes),
    ).to(device)
    workers = config.workers if config.workers is not None else min(8, os.cpu_count() or 1)
    sampler = EpochSampler(
        len(train_set), rank=info.rank, world_size=info.world_size, seed=s["seed"], global_batch=s["batch_size"]
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=local_batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_failures,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )
    val_sampler = EpochSampler(len(val_set), rank=info.rank, world_size=info.world_size, shuffle=False)
    val_loader = make_eval_loader(val_set, batch_size=max(1, local_batch), workers=workers, sampler=val_sampler)

    record: dict[str, Any] = history[-1] if history else {}
    for epoch in range(start_epoch, s["epochs"]):
        started = time.perf_counter()
        seed_epoch(s["seed"], epoch, info.rank)
        size = image_size_at_epoch(epoch, s)
        sampler.set_epoch(epoch, size)
        lr = optimizer.param_groups[0]["lr"]
        ddp_model.train()
        loss_sum, seen, skipped, wait = 0.0, 0, 0, 0.0
        bar = tqdm(
            total=len(loader),
            desc=f"epoch {epoch + 1}/{s['epochs']}",
            leave=False,
            disable=not (info.is_main and config.progress),
        )
        fetch_start = time.perf_counter()
        for batch, failed in loader:
            wait += time.perf_counter() - fetch_start
            skipped += failed
            if batch is None:
                fetch_start = time.perf_counter()
                continue
            images, labels, params = (t.to(device, non_blocking=True) for t in batch)
            x, targets = augment(images, labels, params)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = ddp_model(x)
            loss = soft_target_cross_entropy(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}; lower the learning rate?")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if s["clip_grad"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), s["clip_grad"])
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * labels.numel()
            seen += labels.numel()
            elapsed = time.perf_counter() - started
            throughput = seen * info.world_size / elapsed
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}", img_s=f"{throughput:.0f}")
            bar.update()
            fetch_start = time.perf_counter()
        bar.close()
        scheduler.step()
        train_seconds = time.perf_counter() - started
        loss_sum, seen, skipped, wait = all_reduce_sum([loss_sum, seen, skipped, wait], info)
        result = evaluate(
            model,
            val_loader,
            device=device,
            autocast_dtype=autocast_dtype,
            dist_info=info,
            progress=info.is_main and config.progress,
        )
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_top1": result.top1,
            "val_top5": result.top5,
            "lr": lr,
            "images_per_s": seen / train_seconds,
            "seconds": time.perf_counter() - started,
            "image_size": size,
            "data_wait_share": wait / info.world_size / train_seconds,
            "skipped_images": int(skipped + result.skipped),
        }
        history.append(record)
        if info.is_main:
            if result.top1 > best_top1:
                best_top1 = result.top1
                meta = {
                    "epoch": str(epoch),
                    "val_top1": f"{result.top1:.4f}",
                    "image_size": str(s["image_size"]),
                    "crop_pct": str(s["crop_pct"]),
                    "mean": json.dumps(s["mean"]),
                    "std": json.dumps(s["std"]),
                }
                save_checkpoint(model, best_path, class_names=train_set.classes, metadata=meta)
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "best_top1": best_top1,
                    "settings": s,
                    "classes": train_set.classes,
                    "rng": rng_state(),
                },
                last_path,
            )
            atomic_write_text("".join(json.dumps(h) + "\n" for h in history), log_path)
            if skipped:
                logger.warning("epoch %d: %d unreadable training images skipped", epoch + 1, int(skipped))
            logger.info(
                "epoch %d/%d  loss %.4f  val top-1 %.2f  top-5 %.2f  lr %.2e  %.0f img/s  %.0f s",
                epoch + 1,
                s["epochs"],
                record["train_loss"],
                result.top1,
                result.top5,
                lr,
                record["images_per_s"],
                record["seconds"],
            )
        else:
            best_top1 = max(best_top1, result.top1)
    return record
