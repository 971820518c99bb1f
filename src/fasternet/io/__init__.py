"""Reading and writing: checkpoints in every layout, downloads into the cache, image files.

Builds no models (that is :mod:`fasternet.builder`); imports only :mod:`fasternet.models` below it.
"""

from fasternet.io.checkpoints import (
    Checkpoint,
    CheckpointError,
    LoadReport,
    convert_state_dict,
    identify_variant,
    infer_config,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fasternet.io.hub import download, is_url, resolve_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "convert_state_dict",
    "download",
    "identify_variant",
    "infer_config",
    "is_url",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
