"""Training and evaluation on image folders: recipes, data, augmentation, loss, engine, runs.

Layout: ``recipes`` (the paper's recipe per variant, typed), ``data`` (per-sample crops and the
epoch sampler), ``augment`` (batched RandAugment, flip, mixup/cutmix), ``loss``, ``engine``
(:func:`train_one_epoch`, :func:`evaluate`), ``run`` (set-up, resume, checkpoints),
``distributed`` (torchrun) and ``state`` (run files and RNG states).
"""

from fasternet.training.engine import EvalResult, evaluate, train_one_epoch
from fasternet.training.recipes import RECIPES, Recipe, recipe_for
from fasternet.training.run import TrainConfig, run_training, train

__all__ = [
    "RECIPES",
    "EvalResult",
    "Recipe",
    "TrainConfig",
    "evaluate",
    "recipe_for",
    "run_training",
    "train",
    "train_one_epoch",
]
