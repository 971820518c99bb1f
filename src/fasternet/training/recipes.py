"""Training recipes as one table of typed records: the paper's ImageNet recipe per variant,
and a fine-tuning preset.

:class:`Recipe` is declared once. ``fasternet train``'s recipe flags are generated from its
fields (:func:`recipe_flags`), and :func:`recipe_for` applies a user's changes with the rules
that tie fields together (the learning rate follows the batch unless given; progressive
resolution only at the recipe's own image size).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from fasternet.models import get_variant, list_models

__all__ = ["PRESETS", "RECIPES", "Recipe", "RecipeFlag", "recipe_flags", "recipe_for", "resolve_crops"]


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The official ImageNet-1k training recipe of one variant (paper, Table 8, and the configs)."""

    batch_size: int = _field(4096, "global batch size over all processes")
    lr: float | None = _field(None, "peak learning rate; default: base_lr x batch_size / 1024")
    base_lr: float = _field(0.001, "learning rate per 1024 images, when --lr is not given")
    weight_decay: float = _field(0.05, "AdamW weight decay (on all parameters)")
    clip_grad: float | None = _field(None, "gradient-norm clipping; 0 disables it")
    drop_path_rate: float = _field(0.0, "stochastic depth rate of the last block")
    randaugment: str | None = _field(None, "RandAugment, e.g. rand-m7-mstd0.5-inc1; none disables it")
    mixup: float = _field(0.0, "mixup alpha; 0 disables it")
    cutmix: float = _field(1.0, "cutmix alpha; 0 disables it")
    mixup_switch_prob: float = _field(0.5, "probability of cutmix when both are on")
    label_smoothing: float = _field(0.1, "label smoothing")
    epochs: int = _field(300, "training epochs")
    warmup_epochs: float = _field(20.0, "linear warm-up epochs (fractions too with --schedule step); 0: none")
    warmup_lr: float = _field(1e-6, "learning rate at the start of the warm-up")
    min_lr: float = _field(1e-5, "learning rate at the end of the cosine decay")
    schedule: str = _field(
        "step", "step: warm-up and cosine per optimizer step; epoch: per epoch, as the official code"
    )
    image_size: int = _field(224, "final training and evaluation size")
    early_image_size: int = _field(192, "progressive resolution: the size before the last late_epochs")
    late_epochs: int = _field(20, "epochs at the final image size")
    crop: str = _field("resized", "training crop: resized (random-resized crop) or pad (resize, pad, random crop)")
    crop_scale: float | None = _field(
        None, "smallest random-resized-crop area; auto: 0.08 for images larger than the training size, else 1"
    )
    crop_padding: int = _field(4, "pixels of padding around the image for --crop pad")
    hflip: float = _field(0.5, "probability of a horizontal flip")
    random_erasing: float = _field(0.0, "probability of erasing a random box per image (timm's pixel mode)")
    crop_pct: float | None = _field(
        None, "evaluation: resize to image_size / crop_pct, center crop; auto: 0.9 for larger images, else 1"
    )
    ema: float = _field(0.0, "decay of an exponential moving average of the weights (e.g. 0.999); 0: none")
    freeze_stages: int = _field(0, "fine-tuning: the stem and this many first stages are not trained")
    head_lr_scale: float = _field(1.0, "fine-tuning: learning-rate multiplier of the head (conv_head, classifier)")

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` if given, else the paper's linear scaling rule."""
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 1024

    @property
    def lr_rule(self) -> str:
        """How :attr:`peak_lr` was set, for the run's first log line."""
        if self.lr is not None:
            return "given"
        return f"{self.base_lr:g} x {self.batch_size} / 1024"


def _paper(name: str, batch_size: int, weight_decay: float, clip_grad, randaugment, mixup: float) -> Recipe:
    # The drop path rate is the variant's (one table: the registry).
    drop_path = float(get_variant(name).model_args["drop_path_rate"])
    return Recipe(
        batch_size=batch_size,
        weight_decay=weight_decay,
        clip_grad=clip_grad,
        drop_path_rate=drop_path,
        randaugment=randaugment,
        mixup=mixup,
    )


RECIPES: Mapping[str, Recipe] = types.MappingProxyType(
    {
        "fasternet_t0": _paper("fasternet_t0", 4096, 0.005, None, None, 0.05),
        "fasternet_t1": _paper("fasternet_t1", 4096, 0.01, None, "rand-m3-mstd0.5-inc1", 0.1),
        "fasternet_t2": _paper("fasternet_t2", 4096, 0.02, None, "rand-m5-mstd0.5-inc1", 0.1),
        "fasternet_s": _paper("fasternet_s", 4096, 0.03, None, "rand-m7-mstd0.5-inc1", 0.3),
        "fasternet_m": _paper("fasternet_m", 2048, 0.05, 1.0, "rand-m7-mstd0.5-inc1", 0.5),
        "fasternet_l": _paper("fasternet_l", 2048, 0.05, 0.01, "rand-m7-mstd0.5-inc1", 0.7),
    }
)
assert set(RECIPES) == set(list_models())


# Fine-tuning a pretrained model on a small set for a few epochs: a short warm-up, a lower
# learning rate, no mixup/cutmix and no progressive resolution; label smoothing and drop path kept.
_FINETUNE = dict(
    epochs=10,
    batch_size=64,
    base_lr=0.008,  # 5e-4 at batch 64
    warmup_epochs=1.0,
    mixup=0.0,
    cutmix=0.0,
    randaugment=None,
    early_image_size=224,
    weight_decay=0.05,
)
PRESETS = ("imagenet", "finetune")


def recipe_for(model: str, preset: str = "imagenet", **changes: Any) -> Recipe:
    """The recipe of ``model`` with ``changes`` applied (``None`` values: keep the recipe's).

    ``preset`` is "imagenet" (the paper's recipe of the variant) or "finetune" (the same with a
    short warm-up, a lower learning rate, no mixup/cutmix, 10 epochs at batch 64).
    ``randaugment="none"`` and ``clip_grad=0`` switch those off. Changing ``image_size`` without
    ``early_image_size`` trains at that size throughout (progressive resolution is the recipe's
    192 -> 224 only); a much shorter run without ``warmup_epochs`` keeps the recipe's share of
    warm-up (20 of 300 epochs: 0.667 of 10).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown recipe preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = RECIPES[get_variant(model).name]
    if preset == "finetune":
        base = dataclasses.replace(base, **_FINETUNE)
    given = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise TypeError(f"unknown recipe setting(s): {', '.join(unknown)}")
    if given.get("randaugment") in ("none", ""):
        given["randaugment"] = None
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    if "image_size" in given and "early_image_size" not in given and given["image_size"] != base.image_size:
        given["early_image_size"] = given["image_size"]
    if "epochs" in given and "warmup_epochs" not in given and base.warmup_epochs > given["epochs"] / 10:
        # the recipe's warm-up, as a share of the run (20 of 300 epochs), for a run of another length
        warmup = base.warmup_epochs * given["epochs"] / base.epochs
        given["warmup_epochs"] = round(warmup) if given.get("schedule", base.schedule) == "epoch" else round(warmup, 3)
    recipe = dataclasses.replace(base, **given)
    _validate(recipe)
    return recipe


def _validate(recipe: Recipe) -> None:
    checks = [
        (recipe.batch_size >= 1, "batch_size must be >= 1"),
        (recipe.epochs >= 1, "epochs must be >= 1"),
        (recipe.peak_lr > 0, "the learning rate must be > 0"),
        (0 <= recipe.warmup_epochs <= recipe.epochs, "warmup_epochs must be in [0, epochs]"),
        (recipe.schedule in ("step", "epoch"), "schedule must be step or epoch"),
        (
            recipe.schedule == "step" or recipe.warmup_epochs == int(recipe.warmup_epochs),
            "schedule epoch needs whole warm-up epochs",
        ),
        (recipe.crop in ("resized", "pad"), "crop must be resized or pad"),
        (recipe.crop_padding >= 0, "crop_padding must be >= 0"),
        (0 <= recipe.hflip <= 1 and 0 <= recipe.random_erasing <= 1, "hflip and random_erasing are probabilities"),
        (0 <= recipe.ema < 1, "ema is a decay in [0, 1)"),
        (0 <= recipe.freeze_stages <= 4, "freeze_stages must be in 0..4"),
        (recipe.head_lr_scale > 0, "head_lr_scale must be > 0"),
        (0 <= recipe.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 <= recipe.drop_path_rate < 1, "drop_path_rate must be in [0, 1)"),
        (recipe.mixup >= 0 and recipe.cutmix >= 0, "mixup and cutmix alphas must be >= 0"),
        (recipe.image_size >= 16 and recipe.early_image_size >= 16, "image sizes must be >= 16"),
        (recipe.crop_scale is None or 0 < recipe.crop_scale <= 1, "crop_scale must be in (0, 1]"),
        (recipe.crop_pct is None or 0 < recipe.crop_pct <= 1, "crop_pct must be in (0, 1]"),
        (recipe.weight_decay >= 0, "weight_decay must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid recipe: {message}")


# ImageNet's crops (the paper's): a random-resized crop of 8-100% of a photo, 0.9 center crop at evaluation.
IMAGENET_CROP_SCALE, IMAGENET_CROP_PCT = 0.08, 0.9


def resolve_crops(recipe: Recipe, image_side: int | None) -> Recipe:
    """The recipe with its automatic crops decided by the data (``image_side``: the images' typical short side).

    ImageNet's crops suit photos larger than the training size. Images no larger than it (Fashion-MNIST's
    28 px trained at 32, CIFAR) are shown whole: a crop of 8% of 28 x 28 pixels is a few pixels, and a 0.9
    center crop cuts the object's edges that training saw (measured: 74% -> 85% top-1 on a 4,000-image
    Fashion-MNIST subset in 5 epochs, benchmarks/results/fmnist_subset.txt).
    """
    small = image_side is not None and image_side <= recipe.image_size
    scale = recipe.crop_scale if recipe.crop_scale is not None else (1.0 if small else IMAGENET_CROP_SCALE)
    pct = recipe.crop_pct if recipe.crop_pct is not None else (1.0 if small else IMAGENET_CROP_PCT)
    return dataclasses.replace(recipe, crop_scale=scale, crop_pct=pct)


@dataclasses.dataclass(frozen=True)
class RecipeFlag:
    """A command-line flag generated from one :class:`Recipe` field."""

    field: str
    flag: str
    type: type
    help: str


def _values_by_variant(name: str) -> str:
    """'0.005 (t0), 0.01 (t1), ...': the paper's value per variant, variants sharing a value together."""
    groups: dict[str, list[str]] = {}
    for variant, recipe in RECIPES.items():
        value = recipe.peak_lr if name == "lr" else getattr(recipe, name)
        nothing = "auto" if name in ("crop_scale", "crop_pct") else "none"
        text = nothing if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        groups.setdefault(text, []).append(variant.removeprefix("fasternet_"))
    if len(groups) == 1:
        return next(iter(groups))
    return ", ".join(f"{value} ({'/'.join(names)})" for value, names in groups.items())


def recipe_flags() -> Iterator[RecipeFlag]:
    """One flag per recipe field, its help text ending with the paper's value per variant."""
    hints = typing.get_type_hints(Recipe)
    for field in dataclasses.fields(Recipe):
        hint = hints[field.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        yield RecipeFlag(
            field=field.name,
            flag="--" + field.name.replace("_", "-"),
            type=base,
            help=f"{field.metadata['help']} (recipe: {_values_by_variant(field.name)})",
        )
