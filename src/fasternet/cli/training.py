"""Commands that train: train (recipe flags generated from the recipe table) and prepare."""

from __future__ import annotations

import argparse

from fasternet.cli._common import add_command, from_args, positive_int
from fasternet.training.data import FASHION_MNIST_SOURCE, prepare_fashion_mnist
from fasternet.training.recipes import PRESETS, recipe_flags, recipe_for
from fasternet.training.run import TrainConfig, resolve_model_name, run_training


def cmd_train(args: argparse.Namespace) -> None:
    changes = {flag.field: getattr(args, flag.field, None) for flag in recipe_flags()}
    model = resolve_model_name(args.model, args.pretrained)
    recipe = recipe_for(model, args.recipe, **changes)
    run_training(from_args(args, TrainConfig, model=model, recipe=recipe))


def cmd_prepare(args: argparse.Namespace) -> None:
    if args.dataset in ("trees", "nuclei"):
        from fasternet.detection import data as detection_data  # torchvision: imported only when asked for

        if not args.source:
            wheel = "deepforest==2.1.0" if args.dataset == "trees" else "stardist==0.9.2"
            raise ValueError(
                f"--source is needed: the folder or the wheel holding the files (pip download {wheel} --no-deps)"
            )
        prepare = detection_data.prepare_trees if args.dataset == "trees" else detection_data.prepare_nuclei
        out = prepare(args.output, source=args.source)
        print(f"wrote {out}/train.json, {out}/val.json and {out}/images")
        return
    out = prepare_fashion_mnist(args.output, source=args.source or FASHION_MNIST_SOURCE, train=args.train, val=args.val)
    print(f"wrote {out}/train and {out}/val")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", cmd_train, "train on an image folder with the paper's recipe (torchrun for DDP)")
    p.add_argument("--model", help="variant name (default with --pretrained: the checkpoint's variant)")
    p.add_argument(
        "--data", required=True, default=argparse.SUPPRESS, help="folder holding train/ and val/ image folders"
    )
    p.add_argument(
        "--output", required=True, default=argparse.SUPPRESS, help="run folder: last.pt, best.safetensors, log.jsonl"
    )
    p.add_argument(
        "--recipe",
        choices=PRESETS,
        default="imagenet",
        help="imagenet: the paper's recipe of the variant; finetune: short warm-up, lower lr, no mixup/cutmix, "
        "10 epochs at batch 64; the flags below change either",
    )
    recipe = p.add_argument_group("recipe (default: the variant's ImageNet recipe, values per variant in brackets)")
    for flag in recipe_flags():
        recipe.add_argument(flag.flag, dest=flag.field, type=flag.type, help=flag.help, default=argparse.SUPPRESS)
    run = p.add_argument_group("run")
    run.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast: auto = fp16 on GPUs, bf16 on CPUs that have it, else off",
    )
    run.add_argument("--workers", type=int, help="data loading processes per training process (default: cores, max 8)")
    run.add_argument(
        "--pretrained",
        help="initialize from a variant's release (its name) or a checkpoint (any layout, e.g. another run's "
        "best.safetensors); the classifier is kept for the same classes (count, and names where stored)",
    )
    run.add_argument("--num-classes", type=positive_int, help="check the number of classes (default: from the folders)")
    run.add_argument("--resume", action="store_true", help="continue after the last completed epoch in --output")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    run.add_argument(
        "--max-nonfinite",
        type=positive_int,
        default=20,
        help="batches in a row with a NaN/infinite loss (each skipped) before the run stops",
    )
    run.add_argument("--sync-bn", action="store_true", help="batch norm statistics over all processes")
    run.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    p = add_command(sub, "prepare", cmd_prepare, "write a dataset as an image folder tree")
    p.add_argument(
        "dataset",
        choices=["fashion-mnist", "trees", "nuclei"],
        help="fashion-mnist (image folders); trees, nuclei (COCO detection sets)",
    )
    p.add_argument("output", help="output folder (train/ and val/ are created in it)")
    p.add_argument("--train", type=positive_int, help="number of training images (default: all)")
    p.add_argument("--val", type=positive_int, help="number of validation images (default: all)")
    p.add_argument(
        "--source",
        help="folder (or wheel, for trees/nuclei) with the original files "
        "(fashion-mnist default: Debian's package location)",
    )
