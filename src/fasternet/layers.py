"""The building blocks of FasterNet, reusable in any network: PConv, the FasterNet block, stems,
and the modules other networks build from them (``FasterBlock``, YOLOv8's ``C2f`` with them).

Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023.
A partial convolution (PConv) runs a regular k x k convolution on the first ``c / n_div``
channels only and leaves the rest untouched, so both its FLOPs and its memory traffic are small
and the hardware runs it near its peak. A FasterNet block follows it with a pointwise MLP
(1x1 conv c -> 2c, BN, activation, 1x1 conv 2c -> c) and a residual connection.
``fasternet.deploy`` folds every BN of these layers and runs their PConv without copies.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "C2fFaster",
    "ConvNormAct",
    "DropPath",
    "FasterBlock",
    "FasterNetBlock",
    "PartialConv",
    "PatchEmbed",
    "PatchMerging",
    "act_layer_name",
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
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"PConv's kernel size must be odd (same-size output), got {kernel_size}")
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
        act_layer: ActLayer = nn.ReLU,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
        kernel_size: int = 3,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        act_layer = resolve_act_layer(act_layer)
        hidden_dim = int(dim * mlp_ratio)
        if hidden_dim < 1:
            raise ValueError(f"mlp_ratio {mlp_ratio} leaves no hidden channels for dim {dim}")
        self.shortcut = shortcut
        self.spatial_mixing = PartialConv(dim, n_div, kernel_size)
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
        return x + self.drop_path(y) if self.shortcut else self.drop_path(y)


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


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> BN -> activation: the unit of merging layers and of YOLO's ``Conv``.

    A Sequential of ``conv``, ``bn`` and ``act`` (``nn.Identity`` for ``act_layer=None``), so
    :func:`fasternet.deploy` folds the BN into the conv like any Conv -> BN pair.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        padding: int | None = None,
        groups: int = 1,
        act_layer: ActLayer | None = "silu",
    ) -> None:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            kernel_size // 2 if padding is None else padding,
            groups=groups,
            bias=False,
        )
        act = resolve_act_layer(act_layer)() if act_layer is not None else nn.Identity()
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels), act=act))


class FasterBlock(nn.Module):
    """FasterNet's block for any widths and strides, the way FasterNet changes them between stages.

    When ``in_channels != out_channels`` or ``stride > 1`` the input first goes through a merging
    layer: a ``stride x stride`` convolution with stride ``stride`` (a 1x1 one when only the width
    changes) and BN, as FasterNet's ``PatchMerging``; odd input sizes are floored like it. Then one
    :class:`FasterNetBlock` at ``out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        n_div: int = 4,
        mlp_ratio: float = 2.0,
        act_layer: ActLayer = "relu",
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        changes = in_channels != out_channels or stride > 1
        self.merge = (
            ConvNormAct(in_channels, out_channels, stride, stride, padding=0, act_layer=None)
            if changes
            else nn.Identity()
        )
        self.block = FasterNetBlock(
            out_channels,
            n_div=n_div,
            mlp_ratio=mlp_ratio,
            act_layer=act_layer,
            drop_path=drop_path,
            layer_scale_init_value=layer_scale_init_value,
            shortcut=shortcut,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.merge(x))


class C2fFaster(nn.Module):
    """YOLOv8's C2f with FasterBlocks as its bottlenecks (the "C2f-Faster" of the YOLO forks).

    1x1 ConvNormAct to ``2 * hidden`` channels (``hidden = int(out_channels * expansion)``), split
    in two, ``n`` FasterBlocks each fed the previous piece, all ``2 + n`` pieces concatenated, a
    1x1 ConvNormAct to ``out_channels``. ``act_layer`` is the convolutions' (YOLOv8: SiLU),
    ``block_act_layer`` the FasterBlocks' MLP's (FasterNet: ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        n: int = 1,
        shortcut: bool = True,
        expansion: float = 0.5,
        n_div: int = 4,
        mlp_ratio: float = 2.0,
        act_layer: ActLayer = "silu",
        block_act_layer: ActLayer = "relu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"n counts FasterBlocks and must be >= 1, got {n}")
        self.hidden = int(out_channels * expansion)
        if self.hidden < n_div:
            raise ValueError(f"expansion {expansion} of {out_channels} channels leaves fewer than n_div={n_div}")
        self.cv1 = ConvNormAct(in_channels, 2 * self.hidden, 1, act_layer=act_layer)
        self.cv2 = ConvNormAct((2 + n) * self.hidden, out_channels, 1, act_layer=act_layer)
        self.m = nn.ModuleList(
            FasterBlock(
                self.hidden,
                self.hidden,
                n_div=n_div,
                mlp_ratio=mlp_ratio,
                act_layer=block_act_layer,
                drop_path=drop_path,
                shortcut=shortcut,
            )
            for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            pieces.append(block(pieces[-1]))
        return self.cv2(torch.cat(pieces, dim=1))
