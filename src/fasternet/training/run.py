"""A training run: set-up, resume, the epoch loop and crash-safe checkpoints.

Single process::

    fasternet train --model fasternet_t0 --data ROOT --output runs/t0

Distributed data parallel (gloo on CPUs, nccl on GPUs)::

    torchrun --nproc_per_node=8 -m fasternet train --model fasternet_t0 --data ROOT --output runs/t0

Fine-tuning a pretrained model on other classes::

    fasternet train --pretrained fasternet_t0 --recipe finetune --data ROOT --output runs/ft

``--batch-size`` is the global batch, split over the processes; the learning rate follows the
paper's rule ``lr = 0.001 * batch / 1024`` unless ``--lr`` is given. After every epoch the
output folder holds ``last.pt`` (everything needed to resume), ``best.safetensors`` (the
weights with the best validation top-1, with configuration, class names and evaluation
transform), ``best_ema.safetensors`` (the same for the weight average, with ``--ema``) and
``log.jsonl``. Each file is written atomically: a kill at any moment leaves the previous good
files. ``--resume`` continues after the last completed epoch, with the same result as an
uninterrupted run (every random choice derives from ``(seed, epoch)``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fasternet._utils import cpu_has_bf16
from fasternet.builder import create_model, identify_variant_of
from fasternet.io.checkpoints import save_checkpoint
from fasternet.io.images import ImageFolder, collate_skipping_failures, image_loader, log_unreadable
from fasternet.models import EvalTransform, FasterNet
from fasternet.training.augment import BatchAugment, Mixup, RandAugmentSpec, SampleParams
from fasternet.training.data import (
    EpochSampler,
    PadCrop,
    ShardSampler,
    TrainCrop,
    TrainingImages,
    typical_image_side,
)
from fasternet.training.distributed import DistInfo, all_reduce_sum, convert_sync_batchnorm, init_distributed
from fasternet.training.ema import ModelEma
from fasternet.training.engine import EvalResult, evaluate, train_one_epoch
from fasternet.training.recipes import IMAGENET_CROP_SCALE, Recipe, recipe_for, resolve_crops
from fasternet.training.schedule import LrSchedule
from fasternet.training.state import load_resume_state, rng_state, save_run_state, seed_epoch, write_log

__all__ = ["TrainConfig", "image_size_at_epoch", "lr_at_epoch", "run_training", "train"]

logger = logging.getLogger("fasternet")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run: the model, the data, the recipe, and how to run it."""

    model: str
    data: str
    output: str
    recipe: Recipe
    amp: str = "auto"  # autocast: auto (fp16 on GPUs, bf16 on CPUs that have it), bf16, fp16, off
    workers: int | None = None  # data loading processes per training process
    pretrained: str | None = None  # initialize from a variant's release (its name) or a checkpoint (any layout)
    num_classes: int | None = None  # checked against the class folders
    max_nonfinite: int = 20  # batches in a row with a non-finite loss before the run stops
    resume: bool = False
    seed: int = 0
    sync_bn: bool = False
    device: str | None = None
    channels_last: bool = True
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one (else it would match neither)."""
        return {
            "model": self.model,
            **dataclasses.asdict(self.recipe),
            "seed": self.seed,
            "sync_bn": self.sync_bn,
            "pretrained": self.pretrained,
        }


def lr_at_epoch(epoch: int, recipe: Recipe) -> float:
    """The learning rate of epoch ``epoch`` under the official per-epoch schedule (``schedule="epoch"``)."""
    return LrSchedule(
        recipe.peak_lr, recipe.warmup_lr, recipe.min_lr, recipe.warmup_epochs, recipe.epochs, mode="epoch"
    )(epoch)


def image_size_at_epoch(epoch: int, recipe: Recipe) -> int:
    """Progressive resolution: ``early_image_size`` until the last ``late_epochs`` epochs."""
    return recipe.image_size if epoch >= recipe.epochs - recipe.late_epochs else recipe.early_image_size


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``--amp`` asks for on ``device`` (None: full fp32)."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if torch.backends.mkldnn.is_available() and cpu_has_bf16() else None
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"--amp must be bf16, fp16, off or auto, got {amp!r}")


def train(
    model: str | None,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    recipe: Recipe | None = None,
    preset: str = "imagenet",
    amp: str = "auto",
    workers: int | None = None,
    pretrained: str | None = None,
    num_classes: int | None = None,
    resume: bool = False,
    seed: int = 0,
    sync_bn: bool = False,
    device: str | None = None,
    channels_last: bool = True,
    progress: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (``train/`` and ``val/`` class folders) into ``output``.

    The recipe is the variant's ``preset`` ("imagenet": the paper's; "finetune") with
    ``changes`` (any :class:`Recipe` field, e.g. ``epochs=10, lr=2e-3``) applied by
    :func:`fasternet.recipe_for`, or the ``recipe`` given. ``pretrained`` (a variant name for
    its release, or a checkpoint, e.g. another run's ``best.safetensors``) initializes the
    weights; ``model`` may then be None (the checkpoint's variant). Returns the last epoch's
    log record.
    """
    if recipe is not None and changes:
        raise TypeError("pass either recipe= or recipe changes, not both")
    model = resolve_model_name(model, pretrained)
    config = TrainConfig(
        model=model,
        data=os.fspath(data),
        output=os.fspath(output),
        recipe=recipe or recipe_for(model, preset, **changes),
        amp=amp,
        workers=workers,
        pretrained=pretrained,
        num_classes=num_classes,
        resume=resume,
        seed=seed,
        sync_bn=sync_bn,
        device=device,
        channels_last=channels_last,
        progress=progress,
    )
    return run_training(config)


def match_classifier(model: FasterNet, classes: Sequence[str]) -> None:
    """Make a classifier kept from a checkpoint answer for the data's classes, by name.

    A checkpoint that names its classes keeps its classifier only for the same classes (rows put
    in the data's folder order); one trained on other classes, even as many, is re-initialized:
    its outputs would be wrong labels, which costs more to unlearn than to learn afresh.
    """
    kept = getattr(model, "class_names", None)
    if not kept or list(kept) == list(classes):
        return
    if sorted(kept) == sorted(classes):
        order = torch.tensor([list(kept).index(name) for name in classes])
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight[order])
            model.classifier.bias.copy_(model.classifier.bias[order])
        logger.info("classifier rows reordered from the checkpoint's class order to the data's")
        return
    others = sorted(set(kept) - set(classes))
    model.reset_classifier(len(classes))
    logger.warning(
        "classifier re-initialized: the checkpoint was trained on other classes (%s%s) than the data's",
        ", ".join(others[:3]),
        ", ..." if len(others) > 3 else "",
    )


def resolve_model_name(model: str | None, pretrained: str | None) -> str:
    """The variant whose recipe a run uses: ``model``, or the one ``pretrained`` holds."""
    if model is not None:
        return model
    if pretrained is None:
        raise ValueError("name the model (--model NAME), or start from --pretrained NAME_OR_CHECKPOINT")
    variant = identify_variant_of(pretrained)
    if variant is None:
        raise ValueError(f"{pretrained} is not one of the registered variants: name its recipe with --model NAME")
    return variant


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``config`` describes; returns the last epoch's log record."""
    info = init_distributed(config.device)
    try:
        run = _set_up(config, info)
        return _fit(run)
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclasses.dataclass
class _Run:
    """Everything the epoch loop touches, built once by :func:`_set_up`."""

    config: TrainConfig
    recipe: Recipe  # the config's, with the automatic crops decided by the data
    image_side: int | None  # the training images' typical short side
    info: DistInfo
    model: FasterNet
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    augment: BatchAugment
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    classes: list[str]
    eval_transform: EvalTransform
    ema: ModelEma | None = None
    start_epoch: int = 0
    best_top1: float = -1.0
    best_ema_top1: float = -1.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reported: set[str] = dataclasses.field(default_factory=set)  # unreadable files already named

    @property
    def output(self) -> Path:
        return Path(self.config.output)


def _folders(data: Path) -> tuple[Path, Path]:
    train_dir, val_dir = data / "train", data / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: --data must hold train/ and val/ image folders")
    return train_dir, val_dir


def _set_up(config: TrainConfig, info: DistInfo) -> _Run:
    output = Path(config.output)
    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir = _folders(Path(config.data))
    train_folder = ImageFolder(train_dir)
    image_side = typical_image_side(train_folder)
    recipe = resolve_crops(config.recipe, image_side)
    if recipe.batch_size % info.world_size:
        raise ValueError(f"--batch-size {recipe.batch_size} is not divisible by the {info.world_size} processes")
    local_batch = recipe.batch_size // info.world_size
    device = info.device
    randaugment = RandAugmentSpec.parse(recipe.randaugment) if recipe.randaugment else None
    eval_transform = EvalTransform(recipe.image_size, recipe.crop_pct)
    crop = TrainCrop(scale=(recipe.crop_scale, 1.0)) if recipe.crop == "resized" else PadCrop(recipe.crop_padding)
    train_set = TrainingImages(
        train_folder,
        crop=crop,
        augment_params=SampleParams(randaugment, hflip=recipe.hflip, random_erasing=recipe.random_erasing),
        seed=config.seed,
    )
    val_set = ImageFolder(val_dir, transform=eval_transform)
    if val_set.classes != train_set.classes:
        raise ValueError("train/ and val/ must have the same class folders")
    num_classes = len(train_set.classes)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"--num-classes {config.num_classes} but the data has {num_classes} class folders")
    if len(train_set) < recipe.batch_size:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {recipe.batch_size}")

    torch.manual_seed(config.seed)
    pretrained = True if config.pretrained == config.model else config.pretrained or False
    model = create_model(
        config.model, num_classes=num_classes, drop_path_rate=recipe.drop_path_rate, pretrained=pretrained
    )
    if pretrained:
        match_classifier(model, train_set.classes)
    model.class_names = train_set.classes
    model.freeze_stages(recipe.freeze_stages)
    if config.sync_bn and info.enabled:
        model = convert_sync_batchnorm(model, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device).to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, recipe), lr=recipe.peak_lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay
    )
    dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    mixup = Mixup(recipe.mixup, recipe.cutmix, recipe.mixup_switch_prob, recipe.label_smoothing, num_classes)
    augment = BatchAugment(
        mean=eval_transform.mean,
        std=eval_transform.std,
        randaugment=randaugment,
        mixup=mixup,
        random_erasing=recipe.random_erasing > 0,
    ).to(device)
    workers = config.workers if config.workers is not None else min(8, os.cpu_count() or 1)
    sampler = EpochSampler(
        len(train_set), rank=info.rank, world_size=info.world_size, seed=config.seed, global_batch=recipe.batch_size
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
    schedule = LrSchedule(
        recipe.peak_lr,
        recipe.warmup_lr,
        recipe.min_lr,
        recipe.warmup_epochs,
        recipe.epochs,
        steps_per_epoch=len(loader),
        mode=recipe.schedule,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: schedule(index) / recipe.peak_lr)
    val_sampler = ShardSampler(len(val_set), rank=info.rank, world_size=info.world_size)
    val_loader = image_loader(val_set, batch_size=max(1, local_batch), workers=workers, sampler=val_sampler)
    ema = ModelEma(model, recipe.ema) if recipe.ema > 0 else None
    run = _Run(
        config, recipe, image_side, info, model, ddp_model, optimizer, schedule, scheduler, scaler, dtype, augment,
        sampler, loader, val_loader, train_set.classes, eval_transform, ema,
    )  # fmt: skip
    _resume(run)
    if info.is_main:
        logger.info("%s", _start_line(run, len(train_set), local_batch))
    return run


def _parameter_groups(model: FasterNet, recipe: Recipe) -> list[dict[str, Any]]:
    """The trainable parameters; the head's (conv_head, classifier) at ``head_lr_scale`` x the rate."""
    head = {id(p) for m in (getattr(model, "conv_head", None), getattr(model, "classifier", None)) if m is not None
            for p in m.parameters()}  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    if recipe.head_lr_scale == 1.0:
        return [{"params": trainable}]
    return [
        {"params": [p for p in trainable if id(p) not in head]},
        {"params": [p for p in trainable if id(p) in head], "lr": recipe.peak_lr * recipe.head_lr_scale},
    ]


def _start_line(run: _Run, images: int, local_batch: int) -> str:
    """What the run is about to do, in one line: batch, learning rate and how it was set, schedule, AMP, sizes."""
    recipe, info = run.recipe, run.info
    sizes = (
        f"image size {recipe.early_image_size}, {recipe.image_size} for the last {recipe.late_epochs} epochs"
        if recipe.early_image_size != recipe.image_size and recipe.epochs > recipe.late_epochs
        else f"image size {recipe.image_size}"
    )
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[run.autocast_dtype]
    crop = (
        f"pad-{recipe.crop_padding} crop"
        if recipe.crop == "pad"
        else "whole-image crop"
        if recipe.crop_scale == 1.0
        else f"random-resized crop {recipe.crop_scale:g}-1"
    )
    auto = run.config.recipe.crop_scale is None or run.config.recipe.crop_pct is None
    why = ""
    if auto and run.image_side is not None:
        kind = "ImageNet's" if recipe.crop_scale == IMAGENET_CROP_SCALE else "small images"
        why = f" ({kind}: the images' short side is {run.image_side} px)"
    extras = [f"{crop}, eval crop {recipe.crop_pct:g}{why}"]
    if recipe.ema:
        extras.append(f"EMA {recipe.ema:g}")
    if recipe.freeze_stages:
        extras.append(f"stem and {recipe.freeze_stages} stages frozen")
    if recipe.head_lr_scale != 1.0:
        extras.append(f"head lr x{recipe.head_lr_scale:g}")
    start = f", resuming after epoch {run.start_epoch}" if run.start_epoch else ""
    return (
        f"training {run.config.model} on {images} images ({len(run.classes)} classes) for {recipe.epochs} epochs"
        f"{start}: global batch {recipe.batch_size} = {local_batch} per process x {info.world_size} "
        f"process{'es' if info.world_size > 1 else ''}, peak lr {recipe.peak_lr:g} ({recipe.lr_rule}), "
        f"{run.schedule.describe()}, amp {amp}, {sizes}{''.join(', ' + e for e in extras)}"
    )


def _resume(run: _Run) -> None:
    last_path = run.output / "last.pt"
    if not run.config.resume:
        return
    if not last_path.exists():
        if run.info.is_main:
            logger.info("--resume: no %s yet, starting from scratch", last_path)
        return
    stateful = {"model": run.model, "optimizer": run.optimizer, "scheduler": run.scheduler, "scaler": run.scaler}
    if run.ema is not None:
        stateful["ema"] = run.ema
    state, run.history = load_resume_state(last_path, run.output / "log.jsonl", run.config.identity(), stateful)
    run.start_epoch, run.best_top1 = state["epoch"], state["best_top1"]
    run.best_ema_top1 = state.get("best_ema_top1", -1.0)
    if run.info.is_main:
        logger.info("resuming %s after epoch %d", run.output, run.start_epoch)


def _fit(run: _Run) -> dict[str, Any]:
    config, recipe, info = run.config, run.recipe, run.info
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    record: dict[str, Any] = run.history[-1] if run.history else {}
    for epoch in range(run.start_epoch, recipe.epochs):
        seed_epoch(config.seed, epoch, info.rank)
        size = image_size_at_epoch(epoch, recipe)
        run.sampler.set_epoch(epoch, size)
        lr = run.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        bar = tqdm(
            total=len(run.loader),
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            leave=False,
            disable=not (info.is_main and config.progress),
        )
        with bar:
            stats = train_one_epoch(
                run.ddp_model,
                run.loader,
                run.optimizer,
                augment=run.augment,
                device=info.device,
                scaler=run.scaler,
                autocast_dtype=run.autocast_dtype,
                clip_grad=recipe.clip_grad,
                scheduler=run.scheduler if recipe.schedule == "step" else None,
                ema=run.ema,
                memory_format=memory_format,
                dist_info=info,
                max_nonfinite=config.max_nonfinite,
                progress=bar,
            )
        if recipe.schedule == "epoch":
            run.scheduler.step()
        loss_sum, seen, skipped, wait, nonfinite = all_reduce_sum(
            [stats.loss_sum, stats.images, len(stats.unreadable), stats.data_wait, stats.nonfinite_steps], info
        )
        result = _evaluate(run, run.model)
        ema_result = _evaluate(run, run.ema.module) if run.ema is not None else None
        log_unreadable(stats.unreadable + result.unreadable, run.reported)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_top1": result.top1,
            "val_top5": result.top5,
            "lr": lr,
            "images_per_s": seen / stats.seconds,
            "seconds": time.perf_counter() - started,
            "train_seconds": stats.seconds,
            "image_size": size,
            "data_wait_share": wait / info.world_size / stats.seconds,
            "skipped_images": int(skipped + result.skipped),
            "nonfinite_steps": int(nonfinite),
        }
        if ema_result is not None:
            record.update(val_top1_ema=ema_result.top1, val_top5_ema=ema_result.top5)
        run.history.append(record)
        _checkpoint(run, epoch, result, ema_result)
    return record


def _evaluate(run: _Run, model: nn.Module) -> EvalResult:
    return evaluate(
        model,
        run.val_loader,
        device=run.info.device,
        autocast_dtype=run.autocast_dtype,
        dist_info=run.info,
        progress=run.info.is_main and run.config.progress,
    )


def _save_if_better(run: _Run, model: nn.Module, epoch: int, top1: float, best: float, name: str) -> float:
    """Write ``name`` when ``top1`` beats ``best``; returns the new best."""
    if top1 <= best:
        return best
    if run.info.is_main:
        meta = {"epoch": str(epoch), "val_top1": f"{top1:.4f}", **run.eval_transform.to_metadata()}
        save_checkpoint(model, run.output / name, class_names=run.classes, metadata=meta)
    return top1


def _checkpoint(run: _Run, epoch: int, result: EvalResult, ema_result: EvalResult | None) -> None:
    """After each epoch (rank 0 writes): best weights when top-1 improved, the resume state, the log."""
    run.best_top1 = _save_if_better(run, run.model, epoch, result.top1, run.best_top1, "best.safetensors")
    if ema_result is not None:
        run.best_ema_top1 = _save_if_better(
            run, run.ema.module, epoch, ema_result.top1, run.best_ema_top1, "best_ema.safetensors"
        )
    if not run.info.is_main:
        return
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch + 1,
        "best_top1": run.best_top1,
        "best_ema_top1": run.best_ema_top1,
        "settings": run.config.identity(),
        "classes": run.classes,
        "rng": rng_state(),
    }
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    save_run_state(state, run.output / "last.pt")
    write_log(run.history, run.output / "log.jsonl")
    record = run.history[-1]
    ema = f"  EMA top-1 {ema_result.top1:.2f}" if ema_result is not None else ""
    nonfinite = f"  {record['nonfinite_steps']} non-finite steps skipped" if record["nonfinite_steps"] else ""
    logger.info(
        "epoch %d/%d  loss %.4f  val top-1 %.2f  top-5 %.2f%s  lr %.2e  %.0f img/s  %.0f s%s",
        epoch + 1,
        run.recipe.epochs,
        record["train_loss"],
        result.top1,
        result.top5,
        ema,
        record["lr"],
        record["images_per_s"],
        record["seconds"],
        nonfinite,
    )
