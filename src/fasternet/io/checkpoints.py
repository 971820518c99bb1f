"""Reading, converting and writing FasterNet checkpoints in every published layout.

Layouts (see ``../shared/reference/checkpoint_layouts.json`` in the development tree):

* ``official``: the released ImageNet ``.pth`` files, a raw state_dict whose ``stages.0..6``
  interleave stages (even) and merging layers (odd), with ``avgpool_pre_head.1`` and ``head``;
  its detection backbone adds ``norm0/2/4/6``. mmdet checkpoints hold it under ``state_dict``
  with the prefix ``backbone.``.
* ``timm``: ``stages.i.downsample``, ``conv_head``, ``classifier``. This is also our own module
  tree, which adds ``feature_norms.i`` for the backbone's output norms.

Wrappers are unwrapped (``state_dict``, ``model``, Lightning's ``model.``, DDP's ``module.``,
``torch.compile``'s ``_orig_mod.``). Pickles are read with ``weights_only=True``: loading a
checkpoint never runs code from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fasternet._utils import atomic_write
from fasternet._version import __version__
from fasternet.models import EvalTransform, FasterNet, get_variant, list_models

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "convert_state_dict",
    "identify_variant",
    "infer_config",
    "load_checkpoint",
    "read_checkpoint",
    "read_file",
    "save_checkpoint",
]

logger = logging.getLogger("fasternet")

FORMAT_NAME = "fasternet"
FORMAT_VERSION = "1"
LAYOUTS = ("fasternet", "official", "timm")
_ANCHOR_KEY = "stages.0.blocks.0.spatial_mixing.partial_conv3.weight"
_HEAD_KEYS = ("conv_head.", "classifier.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module")
_ARCH_FIELDS = ("in_chans", "embed_dim", "depths", "mlp_ratio", "n_div", "patch_size", "patch_size2")

StateDict = dict[str, torch.Tensor]
Source = str | os.PathLike | Mapping


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not a FasterNet, or does not fit the model."""


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read from disk or memory, its weights converted to this package's layout."""

    state_dict: StateDict
    layout: str  # the layout it was stored in: "official", "timm" or "fasternet"
    metadata: dict[str, str]
    origin: str  # a path, or "<dict>"

    @property
    def config(self) -> dict[str, Any] | None:
        """The model configuration saved with the weights (files from :func:`save_checkpoint`)."""
        raw = self.metadata.get("config")
        return json.loads(raw) if raw else None

    @property
    def class_names(self) -> list[str] | None:
        raw = self.metadata.get("class_names")
        return json.loads(raw) if raw else None

    def eval_transform(self, default: EvalTransform | None = None) -> EvalTransform:
        """The evaluation transform recorded with the weights, over ``default`` where it records none."""
        return EvalTransform.from_metadata(self.metadata, default)


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_checkpoint` did beyond a plain one-to-one load."""

    layout: str
    skipped: list[str]  # checkpoint keys deliberately not loaded (head of another task, ...)
    left_initialized: list[str]  # model keys the checkpoint did not provide
    unexpected: list[str]  # checkpoint keys with no place in the model (strict=False only)


# --------------------------------------------------------------------------------------------
# Reading


def read_file(path: Path) -> tuple[Any, dict[str, str]]:
    """The object stored in a checkpoint file (never running code from it) and its safetensors metadata."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                return {key: f.get_tensor(key) for key in f.keys()}, metadata  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt or truncated safetensors file {path}: {e}") from None
    if not head.startswith((b"PK", b"\x80")):  # a torch zip archive, or a legacy pickle
        kind = " (text or HTML: a failed download?)" if head.lstrip()[:1] in (b"<", b"{", b"#") else ""
        raise CheckpointError(f"{path} is not a checkpoint: neither safetensors nor a PyTorch file{kind}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"refused to load {path}: it pickles objects other than tensors and plain containers, "
                "which could run code (weights_only loading). If you trust its source, load it yourself "
                "with torch.load(..., weights_only=False) and pass the state dict"
            ) from None
        raise CheckpointError(f"corrupt checkpoint {path}: {e}") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/... for damaged zip or pickle data
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {reason}") from None


def _unwrap(obj: Any, origin: str) -> StateDict:
    """Find the tensor dict inside a training checkpoint and strip wrapper prefixes."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin} is not a state dict (it holds a {type(obj).__name__})")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin} is not a state dict: it holds no tensors (keys: {_first(list(obj))})")
    # The prefix in front of the first block's PConv weight tells where the backbone sits:
    # "" (raw), "module." (DDP), "model." (Lightning), "backbone." (mmdet), "_orig_mod." ...
    prefixes = sorted(
        (k[: -len(_ANCHOR_KEY)] for k in tensors if k.endswith(_ANCHOR_KEY)),
        key=lambda p: (p.count("ema"), len(p)),
    )
    if not prefixes:
        raise CheckpointError(
            f"{origin} is not a FasterNet checkpoint (unknown layout: no '...{_ANCHOR_KEY}'); "
            f"its first keys: {_first(list(tensors))}"
        )
    prefix = prefixes[0]
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


_OFFICIAL_PATTERN = re.compile(r"^(stages\.\d+\.(reduction|norm)\.|avgpool_pre_head\.|head\.|norm\d+\.)")
_NATIVE_PATTERN = re.compile(r"^(stages\.\d+\.downsample\.|conv_head\.|classifier\.|feature_norms\.)")


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"official"`` or ``"timm"`` (this package's own tree), from the key names."""
    official = any(_OFFICIAL_PATTERN.match(k) for k in state_dict)
    native = any(_NATIVE_PATTERN.match(k) for k in state_dict)
    if official and native:
        raise CheckpointError("mixed checkpoint layout: both official and timm-style keys are present")
    return "official" if official else "timm"


def _official_to_native(key: str) -> str:
    if m := re.match(r"^stages\.(\d+)\.(.*)$", key):
        index, rest = int(m.group(1)), m.group(2)
        if index % 2 == 0:
            return f"stages.{index // 2}.{rest}"
        return f"stages.{(index + 1) // 2}.downsample.{rest}"
    if key.startswith("avgpool_pre_head.1."):
        return "conv_head." + key[len("avgpool_pre_head.1.") :]
    if key.startswith("head."):
        return "classifier." + key[len("head.") :]
    if m := re.match(r"^norm(\d+)\.(.*)$", key):
        return f"feature_norms.{int(m.group(1)) // 2}.{m.group(2)}"
    return key


def _native_to_official(key: str) -> str:
    if m := re.match(r"^stages\.(\d+)\.downsample\.(.*)$", key):
        return f"stages.{2 * int(m.group(1)) - 1}.{m.group(2)}"
    if m := re.match(r"^stages\.(\d+)\.(.*)$", key):
        return f"stages.{2 * int(m.group(1))}.{m.group(2)}"
    if key.startswith("conv_head."):
        return "avgpool_pre_head.1." + key[len("conv_head.") :]
    if key.startswith("classifier."):
        return "head." + key[len("classifier.") :]
    if m := re.match(r"^feature_norms\.(\d+)\.(.*)$", key):
        return f"norm{2 * int(m.group(1))}.{m.group(2)}"
    return key


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], layout: str) -> StateDict:
    """Convert a state dict in any supported layout to ``layout`` ("fasternet", "official", "timm").

    The ``timm`` and ``fasternet`` layouts are identical for classifiers; a features_only model's
    output norms (``feature_norms.i``) have no timm counterpart and are kept as they are.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    native = _to_native(dict(state_dict))
    if layout == "official":
        return {_native_to_official(k): v for k, v in native.items()}
    return native


def _to_native(state_dict: StateDict) -> StateDict:
    if detect_layout(state_dict) == "official":
        return {_official_to_native(k): v for k, v in state_dict.items()}
    return state_dict


def read_checkpoint(source: Source) -> Checkpoint:
    """Read a checkpoint file (safetensors, .pth, .bin, any wrapper) or an in-memory dict."""
    if isinstance(source, Mapping):
        obj, metadata, origin = source, {}, "<dict>"
    else:
        path = Path(source)
        obj, metadata = read_file(path)
        origin = str(path)
    state_dict = _unwrap(obj, origin)
    layout = detect_layout(state_dict)
    if metadata.get("format") == FORMAT_NAME:
        layout = "fasternet"
    return Checkpoint(_to_native(state_dict), layout, metadata, origin)


# --------------------------------------------------------------------------------------------
# What a state dict is


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture arguments of :class:`FasterNet` read off the shapes of a state dict.

    The activation cannot be seen in the weights: it is taken from the registered variant with
    the same shapes, and left out when there is none.
    """
    sd = _to_native(dict(state_dict))
    try:
        stem = sd["patch_embed.proj.weight"]
    except KeyError:
        raise CheckpointError("not a FasterNet state dict: no patch_embed.proj.weight") from None
    embed_dim, in_chans, patch_size = stem.shape[0], stem.shape[1], stem.shape[2]
    depths: list[int] = []
    while any(k.startswith(f"stages.{len(depths)}.blocks.") for k in sd):
        i = len(depths)
        block_ids = {int(k.split(".")[3]) for k in sd if k.startswith(f"stages.{i}.blocks.")}
        depths.append(max(block_ids) + 1)
    pconv = sd[_ANCHOR_KEY].shape[0]
    n_div = next(n for n in range(1, embed_dim + 1) if embed_dim // n == pconv)
    hidden = sd["stages.0.blocks.0.mlp.0.weight"].shape[0]
    config: dict[str, Any] = dict(
        in_chans=int(in_chans),
        embed_dim=int(embed_dim),
        depths=depths,
        mlp_ratio=hidden / embed_dim,
        n_div=n_div,
        patch_size=int(patch_size),
        patch_stride=int(patch_size),
    )
    if "stages.1.downsample.reduction.weight" in sd:
        size2 = int(sd["stages.1.downsample.reduction.weight"].shape[-1])
        config.update(patch_size2=size2, patch_stride2=size2)
    if "stages.0.blocks.0.layer_scale" in sd:
        config["layer_scale_init_value"] = float(sd["stages.0.blocks.0.layer_scale"].abs().mean()) or 1e-6
    if "conv_head.weight" in sd:
        config["feature_dim"] = int(sd["conv_head.weight"].shape[0])
        config["num_classes"] = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else 0
    else:
        config["features_only"] = True
    variant = identify_variant(config)
    if variant is not None:
        config["act_layer"] = get_variant(variant).model_args["act_layer"]
    return config


def identify_variant(config: Mapping[str, Any]) -> str | None:
    """The registered variant whose architecture ``config`` describes, or None."""
    fields = ["embed_dim", "depths", "mlp_ratio", "n_div", "in_chans"]
    if not config.get("features_only"):
        fields.append("feature_dim")
    for name in list_models():
        reference = FasterNet.__init__.__kwdefaults__ | get_variant(name).model_args
        if all(_same(config.get(f, reference[f]), reference[f]) for f in fields):
            return name
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _describe_arch(config: Mapping[str, Any]) -> str:
    name = identify_variant(config)
    depths = "-".join(str(d) for d in config["depths"])
    detail = f"embed_dim {config['embed_dim']}, depths {depths}"
    return f"{name} ({detail})" if name else f"a FasterNet with {detail}"


# --------------------------------------------------------------------------------------------
# Loading into a model


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_checkpoint(model: FasterNet, source: Source | Checkpoint, *, strict: bool = True) -> LoadReport:
    """Load any supported checkpoint into ``model``; the layout is detected from the keys.

    A classifier of another size (fine-tuning on other classes) is left initialized and logged;
    a features_only model ignores a classification head and keeps its output norms initialized
    when the checkpoint has none. Anything else that does not fit raises :class:`CheckpointError`
    (missing or unexpected keys only when ``strict``; wrong shapes always).
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    incoming = dict(ckpt.state_dict)
    expected = model.state_dict()
    skipped: list[str] = []
    left_initialized: list[str] = []

    if getattr(model, "features_only", False):
        head = [k for k in incoming if k.startswith(_HEAD_KEYS)]
        if head:
            skipped += head
            logger.info("features_only model: the checkpoint's classification head is not used")
        norms = [k for k in expected if k.startswith("feature_norms.")]
        if norms and not any(k.startswith("feature_norms.") for k in incoming):
            left_initialized += norms
            logger.info("the checkpoint has no output norms (a classifier): feature norms left at initialization")
    else:
        norms = [k for k in incoming if k.startswith("feature_norms.")]
        skipped += norms
        classifier = [k for k in incoming if k.startswith("classifier.")]
        if classifier and not all(k in expected and expected[k].shape == incoming[k].shape for k in classifier):
            skipped += classifier
            left_initialized += [k for k in expected if k.startswith("classifier.")]
            found = incoming["classifier.weight"].shape[0] if "classifier.weight" in incoming else "?"
            logger.warning(
                "classifier not loaded: the checkpoint has %s classes, the model %s; "
                "it is left initialized (fine-tuning)",
                found,
                model.num_classes,
            )
    for key in skipped:
        incoming.pop(key, None)

    mismatched = [k for k in incoming if k in expected and incoming[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in incoming and k not in left_initialized]
    unexpected = [k for k in incoming if k not in expected]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(model, ckpt, incoming, expected, mismatched, missing, unexpected))
    if missing or unexpected:
        logger.warning(
            "non-strict load from %s: %d missing keys (%s), %d unexpected keys (%s)",
            ckpt.origin,
            len(missing),
            _first(missing),
            len(unexpected),
            _first(unexpected),
        )
        left_initialized += missing
        for key in unexpected:
            incoming.pop(key)
    model.load_state_dict(incoming, strict=False)
    return LoadReport(ckpt.layout, skipped, left_initialized, unexpected)


def _mismatch_message(
    model: FasterNet,
    ckpt: Checkpoint,
    incoming: StateDict,
    expected: StateDict,
    mismatched: list[str],
    missing: list[str],
    unexpected: list[str],
) -> str:
    parts = [f"checkpoint {ckpt.origin} does not fit the model"]
    try:
        found = infer_config(ckpt.state_dict)
    except CheckpointError:
        found = None
    model_config = getattr(model, "config", None)
    if (
        found is not None
        and model_config is not None
        and any(
            not _same(found.get(f), model_config.get(f))
            for f in ("embed_dim", "depths", "n_div", "mlp_ratio", "in_chans")
        )
    ):
        parts[0] = f"this checkpoint is {_describe_arch(found)}; the model is {_describe_arch(model_config)}"
    if mismatched:
        shapes = [f"{k}: checkpoint {list(incoming[k].shape)} vs model {list(expected[k].shape)}" for k in mismatched]
        parts.append(f"{len(mismatched)} shape mismatches ({_first(shapes, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    model: FasterNet,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the weights as safetensors with the configuration in the metadata, atomically.

    :func:`fasternet.create_model` rebuilds the model from the file alone.
    """
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fasternet_version": __version__,
        "config": json.dumps(model.config),
        **(metadata or {}),
    }
    if class_names is not None:
        if model.num_classes and len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        meta["class_names"] = json.dumps(list(class_names))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, save(tensors, metadata=meta))
