"""FasterNet: the family of image backbones built from PConv blocks (architecture only).

Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023
(arXiv:2303.03667); official code: https://github.com/JierunChen/FasterNet.

The module tree keeps stages as stages (``stages.i.downsample`` then ``stages.i.blocks``), the
layout timm uses; the official release layout (merging layers interleaved with the stages) is
mapped by :mod:`fasternet.io.checkpoints`. Named variants and their weights live in
:mod:`fasternet.models.registry`; building one from a name or a file is :mod:`fasternet.builder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fasternet.layers import ActLayer, FasterNetBlock, PatchEmbed, PatchMerging, act_layer_name, resolve_act_layer
from fasternet.models.transforms import EvalTransform

__all__ = ["FasterNet", "FasterNetStage"]


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
        self.eval_transform = EvalTransform()  # how images are prepared for it; weights set their own
        self.frozen_stages = 0  # see freeze_stages()

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

    def freeze_stages(self, count: int) -> None:
        """Stop training the stem and the first ``count`` stages: weights and BN statistics (fine-tuning)."""
        if not 0 <= count <= len(self.stages):
            raise ValueError(f"freeze_stages takes 0..{len(self.stages)}, got {count}")
        self.frozen_stages = count
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.patch_embed, *self.stages[: self.frozen_stages]] if self.frozen_stages else []

    def train(self, mode: bool = True) -> FasterNet:
        super().train(mode)
        for module in self._frozen_modules():  # frozen parts keep their BN statistics
            module.eval()
        return self

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
