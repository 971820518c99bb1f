"""fasternet: PConv and the FasterNet backbones, exact to the paper and fast in practice."""

from fasternet.checkpoints import (
    Checkpoint,
    CheckpointError,
    convert_state_dict,
    create_model_from_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fasternet.models import FasterNet, PartialConv, create_model, get_variant, list_models
from fasternet.profile import profile

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FasterNet",
    "PartialConv",
    "__version__",
    "convert_state_dict",
    "create_model",
    "create_model_from_checkpoint",
    "get_variant",
    "list_models",
    "load_checkpoint",
    "profile",
    "read_checkpoint",
    "save_checkpoint",
]
