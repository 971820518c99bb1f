"""The one way from "a name or a checkpoint" to a model: :func:`create_model`.

Every path a user takes goes through here: the Python API, ``fasternet eval/predict/export``,
``runner(path)``, fine-tuning and the detection backbone, so they all accept the same sources and
fail with the same errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fasternet.io.checkpoints import (
    Checkpoint,
    CheckpointError,
    identify_variant,
    infer_config,
    load_checkpoint,
    read_checkpoint,
)
from fasternet.io.hf import HubModel, hf_download, is_hf_hub, is_pretrained_folder, read_pretrained
from fasternet.io.hub import download, is_url
from fasternet.layers import resolve_act_layer
from fasternet.models import FasterNet, get_variant, get_weights, list_models, list_weights

__all__ = ["create_model", "create_model_from_checkpoint", "identify_variant_of", "is_model_name"]

logger = logging.getLogger("fasternet")

Source = str | os.PathLike | Mapping[str, Any]
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def is_model_name(source: object) -> bool:
    """Whether ``source`` names a registered variant or weight tag (``fasternet_t0``, ``fasternet_t0.in1k``)."""
    return isinstance(source, str) and (source in list_models() or source in list_weights())


def _looks_like_file(source: str | os.PathLike) -> bool:
    text = os.fspath(source)
    return is_url(text) or Path(text).exists() or os.sep in text or "/" in text or text.endswith(_CHECKPOINT_SUFFIXES)


def _is_state_dict(obj: Mapping) -> bool:
    """A mapping of weights (possibly wrapped, as training checkpoints are), not of FasterNet arguments."""
    return any(
        isinstance(value, Mapping) and key in ("state_dict", "model", "module") or hasattr(value, "shape")
        for key, value in obj.items()
    )


def _hub_model(source: str | os.PathLike) -> HubModel:
    """A Hub-layout source: ``hf-hub:ORG/NAME[@REV]`` (downloaded or cached) or a local folder."""
    folder = hf_download(source) if is_hf_hub(source) else Path(source)
    return read_pretrained(folder, origin=os.fspath(source))


def _read(source: str | os.PathLike | Mapping) -> Checkpoint:
    if isinstance(source, Mapping):
        return read_checkpoint(source)
    if is_hf_hub(source) or is_pretrained_folder(source):
        return read_checkpoint(_hub_model(source).weights)
    if is_url(source):
        return read_checkpoint(download(os.fspath(source)))
    return read_checkpoint(Path(source))


def create_model(
    source: Source,
    *,
    pretrained: bool | str | os.PathLike | Mapping = False,
    num_classes: int | None = None,
    features_only: bool | None = None,
    **overrides: Any,
) -> FasterNet:
    """Build a FasterNet from a variant name, a weight tag, a checkpoint or a configuration.

    ``source``:

    * a variant (``"fasternet_t0"``) or a weight tag (``"fasternet_t0.in1k"``): that architecture;
      ``pretrained=True`` loads the tag's release (the variant's ImageNet weights by default),
      downloaded into ``$FASTERNET_HOME`` once; ``pretrained="path/or/url"`` loads that file;
    * a checkpoint (path, http(s)/file URL, or a state dict) in any layout: the model it holds,
      with its weights (files written by :func:`fasternet.save_checkpoint` carry their
      configuration; for others the architecture is read off the shapes);
    * ``"hf-hub:ORG/NAME[@REVISION]"`` or a folder in the Hub layout (``config.json`` +
      ``model.safetensors``: timm's, e.g. ``hf-hub:timm/fasternet_t0.in1k``, or
      :func:`fasternet.save_pretrained`'s), through huggingface_hub's cache (``HF_HUB_OFFLINE`` works);
    * a mapping of :class:`FasterNet` arguments (any configuration).

    ``num_classes`` defaults to the checkpoint's (1000 for ImageNet weights and a fresh variant);
    another value keeps every weight but the classifier, which is left initialized
    (fine-tuning). ``overrides`` replace architecture arguments (e.g. ``drop_path_rate=0``); an
    unknown one raises TypeError. The model carries ``class_names`` and ``eval_transform`` from
    its weights.
    """
    checkpoint: Checkpoint | None = None
    default_transform = None
    weights = None
    hub_names: list[str] | None = None
    if isinstance(source, (str, os.PathLike)) and (is_hf_hub(source) or is_pretrained_folder(source)):
        if pretrained not in (False, None):
            raise ValueError("create_model(<Hub model>) already loads its weights; drop pretrained=")
        hub = _hub_model(source)
        checkpoint = read_checkpoint(hub.weights)
        config = dict(hub.config)
        default_transform, hub_names = hub.transform, hub.class_names
    elif isinstance(source, Mapping) and not _is_state_dict(source):
        config: dict[str, Any] = dict(source)
    elif is_model_name(source):
        weights = get_weights(source)
        if weights.task != "classification":
            raise ValueError(
                f"{weights.tag} are {weights.detector} detector weights: "
                "use fasternet.detection.create_detector(..., pretrained=True)"
            )
        config = dict(get_variant(weights.variant).model_args)
        default_transform = weights.transform
    elif isinstance(source, Mapping) or (isinstance(source, (str, os.PathLike)) and _looks_like_file(source)):
        if pretrained not in (False, None):
            raise ValueError("create_model(<checkpoint>) already loads that checkpoint; drop pretrained=")
        checkpoint = _read(source)
        config = dict(checkpoint.config or infer_config(checkpoint.state_dict))
    elif isinstance(source, str):
        get_variant(source)  # raises "unknown model ... (did you mean ...?)"
        raise AssertionError("unreachable: get_variant raises for unknown names")
    else:
        raise TypeError(f"create_model() takes a name, a checkpoint or a configuration, not {type(source).__name__}")

    if pretrained is True:
        if weights is None:
            raise ValueError("pretrained=True needs a variant name; pass the checkpoint's path instead")
        checkpoint = read_checkpoint(download(weights.url, sha256=weights.sha256))
    elif pretrained not in (False, None):
        checkpoint = _read(pretrained)

    config.update(overrides)
    if features_only is not None:
        config["features_only"] = features_only
    if config.get("features_only"):
        if num_classes is not None:
            raise ValueError("a features_only model has no classifier: drop num_classes")
    elif num_classes is not None:
        config["num_classes"] = num_classes
    elif checkpoint is not None and "classifier.weight" in checkpoint.state_dict:
        config["num_classes"] = int(checkpoint.state_dict["classifier.weight"].shape[0])
    if "act_layer" not in config:
        origin = checkpoint.origin if checkpoint is not None else "the configuration"
        raise CheckpointError(
            f"{origin} is not a registered variant and does not record its activation; "
            "pass act_layer='gelu' or 'relu' (on the command line: --model NAME)"
        )
    try:
        resolve_act_layer(config["act_layer"])
    except ValueError:
        raise CheckpointError(
            f"the checkpoint was saved with the custom activation {config['act_layer']!r}; pass act_layer=<class>"
        ) from None
    model = FasterNet(**config)
    if default_transform is not None:
        model.eval_transform = default_transform
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint)
        total = len(model.state_dict())
        fresh = f"; left initialized: {', '.join(report.left_initialized)}" if report.left_initialized else ""
        logger.log(
            logging.INFO if pretrained not in (False, None) else logging.DEBUG,  # initializing: say what was kept
            "loaded %d of %d tensors from %s (%s layout)%s",
            total - len(report.left_initialized),
            total,
            checkpoint.origin,
            report.layout,
            fresh,
        )
        model.eval_transform = checkpoint.eval_transform(model.eval_transform)
        classifier_loaded = not any(k.startswith("classifier.") for k in report.left_initialized)
        names = hub_names or checkpoint.class_names
        if names is not None and classifier_loaded and not model.features_only:
            model.class_names = list(names)
    return model


def create_model_from_checkpoint(source: str | os.PathLike | Mapping, **overrides: Any) -> FasterNet:
    """The model a checkpoint holds, with its weights: ``create_model(source, **overrides)``."""
    if isinstance(source, Mapping) and not _is_state_dict(source):
        raise CheckpointError("create_model_from_checkpoint() takes a checkpoint, not a configuration")
    return create_model(source, **overrides)


def identify_variant_of(source: str | os.PathLike) -> str | None:
    """The registered variant a name, tag or checkpoint is (None for another configuration)."""
    if is_model_name(source):
        return get_weights(source).variant
    if is_hf_hub(source) or is_pretrained_folder(source):
        return identify_variant(_hub_model(source).config)
    checkpoint = _read(source)
    return identify_variant(checkpoint.config or infer_config(checkpoint.state_dict))
