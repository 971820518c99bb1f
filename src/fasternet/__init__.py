"""fasternet: PConv and the FasterNet backbones, exact to the paper and fast in practice.

Models: ``create_model``, ``list_models``, ``list_weights``, ``FasterNet``, ``layers`` (PConv
and blocks for any network). Checkpoints: ``load_checkpoint``, ``save_checkpoint``,
``read_checkpoint``, ``convert_state_dict``. Training: ``train``, ``recipe_for``, ``RECIPES``.
Inference: ``deploy``, ``export``, ``runner``, ``quantize``, ``predict``, ``profile``.
Detection lives in ``fasternet.detection`` (needs torchvision). The layers import one way:
models <- io <- builder <- training / inference <- detection <- cli (see the README, "Layout
of the code").
"""

from fasternet import layers
from fasternet._version import __version__
from fasternet.builder import create_model, create_model_from_checkpoint
from fasternet.inference.deployed import deploy
from fasternet.inference.exporters import ExportError, export
from fasternet.inference.prediction import Prediction, predict
from fasternet.inference.profiler import profile
from fasternet.inference.quantization import QuantizationError, QuantizedModel, load_quantized, quantize
from fasternet.inference.runners import Runner, UnsupportedPrecisionError, runner
from fasternet.io.checkpoints import (
    Checkpoint,
    CheckpointError,
    LoadReport,
    convert_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fasternet.io.hf import push_to_hub, save_pretrained
from fasternet.layers import C2fFaster, ConvNormAct, FasterBlock, PartialConv
from fasternet.models import (
    EvalTransform,
    FasterNet,
    Variant,
    Weights,
    get_variant,
    get_weights,
    list_models,
    list_weights,
)
from fasternet.training.data import prepare_fashion_mnist
from fasternet.training.engine import EvalResult
from fasternet.training.recipes import RECIPES, Recipe, recipe_for
from fasternet.training.run import train

__all__ = [
    "RECIPES",
    "C2fFaster",
    "ConvNormAct",
    "FasterBlock",
    "Checkpoint",
    "CheckpointError",
    "EvalResult",
    "EvalTransform",
    "ExportError",
    "FasterNet",
    "LoadReport",
    "PartialConv",
    "Prediction",
    "QuantizationError",
    "QuantizedModel",
    "Recipe",
    "Runner",
    "UnsupportedPrecisionError",
    "Variant",
    "Weights",
    "__version__",
    "convert_state_dict",
    "create_model",
    "create_model_from_checkpoint",
    "deploy",
    "export",
    "get_variant",
    "get_weights",
    "layers",
    "list_models",
    "list_weights",
    "load_checkpoint",
    "load_quantized",
    "predict",
    "prepare_fashion_mnist",
    "profile",
    "push_to_hub",
    "quantize",
    "read_checkpoint",
    "recipe_for",
    "runner",
    "save_checkpoint",
    "save_pretrained",
    "train",
]
