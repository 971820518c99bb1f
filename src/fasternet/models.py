"""FasterNet: PConv (partial convolution) and the FasterNet family of image backbones.

Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023
(arXiv:2303.03667); official code: https://github.com/JierunChen/FasterNet.

Latency = FLOPs / FLOPS. A partial convolution runs a regular k x k convolution on the first
``c / n_div`` channels only and leaves the rest untouched, so both its FLOPs and its memory
traffic are small and the hardware runs it near its peak. A FasterNet block follows it with a
pointwise MLP (1x1 conv c -> 2c, BN, activation, 1x1 conv 2c -> c) and a residual connection.

The module tree keeps stages as stages (``stages.i.downsample`` then ``stages.i.blocks``), the
layout timm uses; the official release layout (merging layers interleaved with the stages) is
mapped by :mod:`fasternet.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DropPath",
    "FasterNet",
    "FasterNetBlock",
    "FasterNetStage",
    "PartialConv",
    "PatchEmbed",
    "PatchMerging",
    "VariantInfo",
    "create_model",
    "get_variant",
    "list_models",
    "resolve_act_layer",
]

ActLayer = str | type[nn.Module]


def resolve_act_layer(act_layer: ActLayer) -> type[nn.Module]:
    """Turn an activation name ("gelu", "ReLU", "silu", ...) or class into an ``nn.Module`` class."""
    if isinstance(act_layer, type) and issubclass(act_layer, nn.Module):
        return act_layer
    if isinstance(act_layer, str):
        by_lower = {name.lower(): name for name in nn.modules.activation.__all__}
        name = by_lower.get(act_layer.lower())
        if name is not None:
            return getattr(nn, name)
        hint = difflib.get_close_matches(act_layer.lower(), by_lower, n=1)
        suggestion = f" (did you mean {by_lower[hint[0]]!r}?)" if hint else ""
        raise ValueError(f"unknown activation {act_layer!r}{suggestion}; use 'gelu', 'relu' or an nn.Module class")
    raise TypeError(f"act_layer must be a name or an nn.Module class, not {type(act_layer).__name__}")


def act_layer_name(act_layer: type[nn.Module]) -> str:
    """The name under which ``act_layer`` is stored in a checkpoint's configuration."""
    if getattr(nn, act_layer.__name__, None) is act_layer:
        return act_layer.__name__.lower()
    return f"{act_layer.__module__}.{act_layer.__qualname__}"


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PartialConv(nn.Module):
    """PConv: a k x k convolution over the first ``dim // n_div`` channels; the rest pass through.

    The input is never modified in place, so the caller's tensor (the block's shortcut) stays
    intact. The convolved and untouched channels are concatenated; :func:`fasternet.deploy`
    replaces this with a form that never copies the untouched channels.
    """

    def __init__(self, dim: int, n_div: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        if n_div < 1 or dim < n_div:
            raise ValueError(f"PConv needs 1 <= n_div <= dim, got dim={dim}, n_div={n_div}")
        self.dim = dim
        self.dim_conv = dim // n_div
        self.dim_untouched = dim - self.dim_conv
        self.partial_conv3 = nn.Conv2d(
            self.dim_conv, self.dim_conv, kernel_size, stride=1, padding=kernel_size // 2, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_conv, x_untouched = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x_conv), x_untouched), dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_conv={self.dim_conv}"


class FasterNetBlock(nn.Module):
    """PConv -> 1x1 conv (c -> hidden) -> BN -> act -> 1x1 conv (hidden -> c) -> drop path -> + x."""

    def __init__(
        self,
        dim: int,
        *,
        n_div: int = 4,
        mlp_ratio: float = 2.0,
        act_layer: type[nn.Module] = nn.ReLU,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dim = int(dim * mlp_ratio)
        self.spatial_mixing = PartialConv(dim, n_div)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden_dim, 1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            act_layer(),
            nn.Conv2d(hidden_dim, dim, 1, bias=False),
        )
        self.layer_scale = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init_value))) if layer_scale_init_value > 0 else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.spatial_mixing(x))
        if self.layer_scale is not None:
            y = y * self.layer_scale[:, None, None]
        return x + self.drop_path(y)


class PatchEmbed(nn.Module):
    """Stem: a non-overlapping patch_size x patch_size conv (no bias) followed by BN."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, patch_stride: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_stride, bias=False)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PatchMerging(nn.Module):
    """Downsampling between stages: a 2x2/2 conv that doubles the channels, then BN."""

    def __init__(self, dim: int, patch_size: int = 2, patch_stride: int = 2) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, patch_size, stride=patch_stride, bias=False)
        self.norm = nn.BatchNorm2d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class FasterNetStage(nn.Module):
    """An optional merging layer, then ``depth`` FasterNet blocks at one resolution."""

    def __init__(
        self,
        dim: int,
        depth: int,
        *,
        downsample: nn.Module | None,
        drop_path: Sequence[float],
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(
            *(FasterNetBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth))
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.blocks:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class FasterNet(nn.Module):
    """A FasterNet of any configuration.

    With ``features_only=False`` the model is a classifier: stem, stages, global average pool,
    1x1 conv to ``feature_dim`` (no bias), activation, linear classifier. With
    ``features_only=True`` it is a dense-prediction backbone returning each stage's output
    through its own BN (strides 4, 8, 16, 32), as the official detection backbone does.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (1, 2, 8, 2),
        mlp_ratio: float = 2.0,
        n_div: int = 4,
        patch_size: int = 4,
        patch_stride: int = 4,
        patch_size2: int = 2,
        patch_stride2: int = 2,
        feature_dim: int = 1280,
        act_layer: ActLayer = "relu",
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths}")
        if embed_dim < n_div:
            raise ValueError(f"embed_dim ({embed_dim}) must be at least n_div ({n_div})")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 removes the classifier), got {num_classes}")
        act_cls = resolve_act_layer(act_layer)
        self.config: dict[str, Any] = dict(
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depths=list(depths),
            mlp_ratio=mlp_ratio,
            n_div=n_div,
            patch_size=patch_size,
            patch_stride=patch_stride,
            patch_size2=patch_size2,
            patch_stride2=patch_stride2,
            feature_dim=feature_dim,
            act_layer=act_layer_name(act_cls),
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
            features_only=features_only,
        )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.features_only = features_only
        self.class_names: list[str] | None = None  # label names, when a checkpoint provides them

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, patch_stride)
        # Stochastic depth rises linearly from 0 over all blocks, as in the official code.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.feature_info: list[dict[str, Any]] = []
        stages = []
        reduction = patch_stride
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            downsample = PatchMerging(dim // 2, patch_size2, patch_stride2) if i > 0 else None
            reduction *= patch_stride2 if i > 0 else 1
            start = sum(depths[:i])
            stages.append(
                FasterNetStage(
                    dim,
                    depth,
                    downsample=downsample,
                    drop_path=dpr[start : start + depth],
                    n_div=n_div,
                    mlp_ratio=mlp_ratio,
                    act_layer=act_cls,
                    layer_scale_init_value=layer_scale_init_value,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)

        if features_only:
            self.feature_norms = nn.ModuleList(nn.BatchNorm2d(info["num_chs"]) for info in self.feature_info)
        else:
            self.head_hidden_size = feature_dim
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.conv_head = nn.Conv2d(self.num_features, feature_dim, 1, bias=False)
            self.act = act_cls()
            self.classifier = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width that leaves at least one pixel after the last stage."""
        cfg = self.config
        # Invert the chain of floor((h - k) / s) + 1 >= 1, from the last merging layer back.
        size = 1
        for _ in range(len(cfg["depths"]) - 1):
            size = (size - 1) * cfg["patch_stride2"] + cfg["patch_size2"]
        return (size - 1) * cfg["patch_stride"] + cfg["patch_size"]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D NCHW batch, got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        min_size = self.min_input_size
        if x.shape[2] < min_size or x.shape[3] < min_size:
            raise ValueError(f"input {x.shape[2]}x{x.shape[3]} is too small: height and width must be >= {min_size}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: the last stage's map (no output norm)."""
        self._check_input(x)
        return self.stages(self.patch_embed(x))

    def forward_intermediates(self, x: torch.Tensor, *, norm: bool = False) -> list[torch.Tensor]:
        """Every stage's output; ``norm=True`` applies the output norms of a features_only model."""
        self._check_input(x)
        if norm and not self.features_only:
            raise ValueError("norm=True needs a features_only model (only it has output norms)")
        x = self.patch_embed(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outputs.append(self.feature_norms[i](x) if norm else x)
        return outputs

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pool, 1x1 conv to ``feature_dim``, activation, classifier (skipped with ``pre_logits``)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classification head")
        x = self.act(self.conv_head(self.global_pool(x))).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, norm=True)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 removes it) for fine-tuning on another label set."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.classifier)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory for large models and batches."""
        for stage in self.stages:
            stage.grad_checkpointing = enable


def _init_weights(module: nn.Module) -> None:
    # Truncated normal (std 0.02) for conv and linear weights, as in the official code.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Variants


@dataclasses.dataclass(frozen=True)
class VariantInfo:
    """A named FasterNet: its architecture, its official ImageNet weights and their accuracy."""

    name: str
    model_args: dict[str, Any]
    checkpoint_file: str
    top1: float  # ImageNet-1k top-1 of the released checkpoint at crop_pct 0.9
    image_size: int = 224
    crop_pct: float = 0.9
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def url(self) -> str:
        return RELEASE_URL_PREFIX + self.checkpoint_file


RELEASE_URL_PREFIX = "https://github.com/JierunChen/FasterNet/releases/download/v1.0/"

_VARIANTS: dict[str, VariantInfo] = {}


def _register(name: str, checkpoint_file: str, top1: float, **model_args: Any) -> None:
    if name in _VARIANTS:
        raise ValueError(f"variant {name!r} is already registered")
    _VARIANTS[name] = VariantInfo(name, model_args, checkpoint_file, top1)


_register(
    "fasternet_t0",
    "fasternet_t0-epoch.281-val_acc1.71.9180.pth",
    71.918,
    embed_dim=40,
    depths=(1, 2, 8, 2),
    act_layer="gelu",
    drop_path_rate=0.0,
)
_register(
    "fasternet_t1",
    "fasternet_t1-epoch.291-val_acc1.76.2180.pth",
    76.218,
    embed_dim=64,
    depths=(1, 2, 8, 2),
    act_layer="gelu",
    drop_path_rate=0.02,
)
_register(
    "fasternet_t2",
    "fasternet_t2-epoch.289-val_acc1.78.8860.pth",
    78.886,
    embed_dim=96,
    depths=(1, 2, 8, 2),
    act_layer="relu",
    drop_path_rate=0.05,
)
_register(
    "fasternet_s",
    "fasternet_s-epoch.299-val_acc1.81.2840.pth",
    81.284,
    embed_dim=128,
    depths=(1, 2, 13, 2),
    act_layer="relu",
    drop_path_rate=0.1,
)
_register(
    "fasternet_m",
    "fasternet_m-epoch.291-val_acc1.82.9620.pth",
    82.962,
    embed_dim=144,
    depths=(3, 4, 18, 3),
    act_layer="relu",
    drop_path_rate=0.2,
)
_register(
    "fasternet_l",
    "fasternet_l-epoch.299-val_acc1.83.5060.pth",
    83.506,
    embed_dim=192,
    depths=(3, 4, 18, 3),
    act_layer="relu",
    drop_path_rate=0.3,
)


def list_models() -> list[str]:
    """Names of the registered FasterNet variants."""
    return list(_VARIANTS)


def get_variant(name: str) -> VariantInfo:
    """The registry entry of ``name``; a ValueError naming the close matches otherwise."""
    try:
        return _VARIANTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _VARIANTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(_VARIANTS)}") from None


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    num_classes: int = 1000,
    features_only: bool = False,
    **overrides: Any,
) -> FasterNet:
    """Build a registered variant; ``pretrained`` is False, True (official weights) or a path/URL.

    ``overrides`` replace the variant's architecture arguments (e.g. ``drop_path_rate=0``);
    an unknown argument raises TypeError. Loading ImageNet weights into a model with another
    ``num_classes`` keeps everything but the classifier (fine-tuning).
    """
    variant = get_variant(name)
    model = FasterNet(**{**variant.model_args, **overrides}, num_classes=num_classes, features_only=features_only)
    if pretrained:
        from fasternet.checkpoints import load_checkpoint  # checkpoints imports this module
        from fasternet.hub import resolve_checkpoint

        source = variant.url if pretrained is True else pretrained
        load_checkpoint(model, resolve_checkpoint(source))
    return model
