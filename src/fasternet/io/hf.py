"""The Hugging Face Hub layout timm uses: a folder (or repository) with ``config.json`` and
``model.safetensors``, read for ``hf-hub:ORG/NAME`` sources and written by :func:`save_pretrained`.

``config.json`` has timm's fields (``architecture``, ``num_classes``, ``pretrained_cfg`` with the
evaluation transform, ``label_names``), so timm loads what we write for the six variants, and a
``fasternet_config`` with the whole configuration, so we load any configuration. The weights are
in timm's key layout, which is also this package's. Downloads go through ``huggingface_hub``
(its cache, revisions, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save

from fasternet._utils import atomic_write, require
from fasternet._version import __version__
from fasternet.io.checkpoints import CheckpointError, convert_state_dict, identify_variant
from fasternet.models import EvalTransform, FasterNet, get_variant

__all__ = [
    "CONFIG_NAME",
    "HF_PREFIX",
    "WEIGHTS_NAME",
    "HubModel",
    "hf_download",
    "is_hf_hub",
    "is_pretrained_folder",
    "push_to_hub",
    "read_pretrained",
    "save_pretrained",
]

HF_PREFIX = "hf-hub:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"  # older timm repositories, and timm's save_for_hf by default


@dataclasses.dataclass(frozen=True)
class HubModel:
    """What a Hub folder describes: the FasterNet arguments, the weights file, classes and transform."""

    config: dict[str, Any]
    weights: Path
    class_names: list[str] | None
    transform: EvalTransform
    origin: str


def is_hf_hub(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def _weights_file(folder: Path) -> Path | None:
    return next((folder / n for n in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME) if (folder / n).is_file()), None)


def is_pretrained_folder(source: object) -> bool:
    """A folder in the Hub layout (``config.json`` and the weights), e.g. from save_pretrained."""
    if not isinstance(source, (str, os.PathLike)) or is_hf_hub(source):
        return False
    path = Path(source)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and _weights_file(path) is not None


def hf_download(source: str) -> Path:
    """The local folder of ``hf-hub:ORG/NAME[@REVISION]``: ``config.json`` and ``model.safetensors``
    fetched into (or found offline in) huggingface_hub's cache."""
    hub = require("huggingface_hub")
    spec = source.removeprefix(HF_PREFIX)
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise ValueError(f"{source!r}: a Hub model is hf-hub:ORG/NAME (optionally @REVISION)")
    try:
        config = hub.hf_hub_download(repo_id, CONFIG_NAME, revision=revision or None)
        try:
            hub.hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision or None)
        except require("huggingface_hub.errors").EntryNotFoundError:  # older repositories: pickled weights
            hub.hf_hub_download(repo_id, LEGACY_WEIGHTS_NAME, revision=revision or None)
    except Exception as error:  # offline without a cached copy, unknown repository, no such revision
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        hint = (
            "it is not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
            if offline
            else "no network, or no such repository/revision; with the files cached, set HF_HUB_OFFLINE=1"
        )
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot get {source}: {hint} ({reason})") from None
    return Path(config).parent


def read_pretrained(folder: str | os.PathLike, origin: str | None = None) -> HubModel:
    """The model a Hub-layout folder describes (ours, or timm's for the registered variants)."""
    folder = Path(folder)
    origin = origin or str(folder)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{origin}: unreadable {CONFIG_NAME} ({error})") from None
    pretrained_cfg = raw.get("pretrained_cfg", {})
    if "fasternet_config" in raw:
        config = dict(raw["fasternet_config"])
    else:
        architecture = raw.get("architecture")  # timm names the variants as this package does
        try:
            config = dict(get_variant(architecture).model_args)
        except ValueError:
            raise CheckpointError(
                f"{origin}: architecture {architecture!r} is not a FasterNet variant this package knows"
            ) from None
        config["num_classes"] = int(raw.get("num_classes", pretrained_cfg.get("num_classes", 1000)))
    size = pretrained_cfg.get("input_size", (3, 224, 224))
    transform = EvalTransform(
        image_size=int(size[-1]),
        crop_pct=float(pretrained_cfg.get("crop_pct", 0.9)),
        mean=tuple(pretrained_cfg.get("mean", EvalTransform().mean)),
        std=tuple(pretrained_cfg.get("std", EvalTransform().std)),
        interpolation=pretrained_cfg.get("interpolation", "bicubic"),
    )
    names = raw.get("label_names") or pretrained_cfg.get("label_names")
    weights = _weights_file(folder)
    if weights is None:
        raise CheckpointError(f"{origin} has {CONFIG_NAME} but no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}")
    return HubModel(config, weights, list(names) if names else None, transform, origin)


def _hub_config(model: FasterNet) -> dict[str, Any]:
    transform = model.eval_transform
    variant = identify_variant(model.config)
    hub_config: dict[str, Any] = {
        "architecture": variant or "fasternet",
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "input_size": [model.in_chans, transform.image_size, transform.image_size],
            "interpolation": transform.interpolation,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "crop_pct": transform.crop_pct,
            "crop_mode": "center",
            "num_classes": model.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "classifier",
        },
        "fasternet_config": model.config,
        "fasternet_version": __version__,
    }
    if model.class_names:
        hub_config["label_names"] = list(model.class_names)
    return hub_config


def save_pretrained(model: FasterNet, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in the Hub layout (timm's keys) into ``directory``.

    Loadable by :func:`fasternet.create_model` (any configuration) and by timm (the six variants:
    ``timm.create_model("local-dir:DIR")``, or ``hf-hub:`` once pushed).
    """
    if not isinstance(model, FasterNet):
        raise TypeError(f"save_pretrained() takes a FasterNet, not {type(model).__name__}")
    if model.features_only:
        raise ValueError("save_pretrained() writes classifiers (timm's layout); save a backbone with save_checkpoint")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in convert_state_dict(model.state_dict(), "timm").items()}
    atomic_write(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, json.dumps(_hub_config(model), indent=2) + "\n")
    return directory


def push_to_hub(
    model: FasterNet,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Add FasterNet weights",
) -> str:
    """Upload ``model`` in the Hub layout to ``repo_id`` (created if needed); returns the commit URL."""
    hub = require("huggingface_hub")
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(commit)
