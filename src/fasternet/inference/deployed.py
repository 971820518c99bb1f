"""Deploy mode: an inference-only FasterNet with BN folded and a copy-free partial convolution.

The training-time block computes ``cat(conv3x3(x[:, :cp]), x[:, cp:])`` and feeds it to a 1x1
convolution. Concatenating copies the untouched channels, and the official "slicing" variant
clones the whole tensor (without the clone it corrupts the residual shortcut). Here the first 1x1
convolution's weight is split by input channels instead::

    h = W[:, :cp] @ conv3x3(x[:, :cp]) + W[:, cp:] @ x[:, cp:] + b

which is the same computation (same MACs) with no copy and the shortcut ``x`` untouched. Every
BN is folded into the convolution before it (or the one after the PConv, for the block's BN),
and layer scale into the last 1x1 convolution. The output norms of a features_only model act on
stage outputs that also feed the next stage, so they stay as per-channel affine layers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fasternet.layers import FasterNetBlock
from fasternet.models import FasterNet

__all__ = ["DeployedBlock", "DeployedFasterNet", "PCONV_FORMS", "deploy", "fold_bn", "split_to_concat"]

PCONV_FORMS = ("split", "concat", "dense")


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` in eval mode (a new module; the inputs are untouched)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class DeployedBlock(nn.Module):
    """A FasterNet block for inference: split-weight PConv (or concat), folded BN and layer scale."""

    def __init__(self, block: FasterNetBlock, form: str = "split") -> None:
        super().__init__()
        if form not in PCONV_FORMS:
            raise ValueError(f"unknown PConv form {form!r}; choose one of {PCONV_FORMS}")
        self.form = form
        pconv = block.spatial_mixing
        self.dim_conv = pconv.dim_conv
        self.dim_untouched = pconv.dim_untouched
        self.partial_conv = copy.deepcopy(pconv.partial_conv3)
        expand = fold_bn(block.mlp[0], block.mlp[1])
        self.act = copy.deepcopy(block.mlp[2])
        with torch.no_grad():
            self.project = copy.deepcopy(block.mlp[3])
            if block.layer_scale is not None:
                self.project.weight.mul_(block.layer_scale.view(-1, 1, 1, 1))
            if form == "concat":
                self.expand = expand
            elif form == "dense":  # no slicing at all: zero weights stand in for the untouched channels
                dim, hidden = pconv.dim, expand.out_channels
                device, dtype = expand.weight.device, expand.weight.dtype
                self.partial_conv = nn.Conv2d(
                    dim,
                    self.dim_conv,
                    pconv.partial_conv3.kernel_size,
                    padding=pconv.partial_conv3.padding,
                    bias=False,
                    device=device,
                    dtype=dtype,
                )
                self.partial_conv.weight.zero_()
                self.partial_conv.weight[:, : self.dim_conv] = pconv.partial_conv3.weight
                self.expand_conv = nn.Conv2d(self.dim_conv, hidden, 1, bias=False, device=device, dtype=dtype)
                self.expand_conv.weight.copy_(expand.weight[:, : self.dim_conv])
                self.expand_rest = nn.Conv2d(dim, hidden, 1, bias=True, device=device, dtype=dtype)
                self.expand_rest.weight.zero_()
                self.expand_rest.weight[:, self.dim_conv :] = expand.weight[:, self.dim_conv :]
                self.expand_rest.bias.copy_(expand.bias)
            else:
                hidden = expand.out_channels
                device, dtype = expand.weight.device, expand.weight.dtype
                self.expand_conv = nn.Conv2d(self.dim_conv, hidden, 1, bias=False, device=device, dtype=dtype)
                self.expand_rest = nn.Conv2d(self.dim_untouched, hidden, 1, bias=True, device=device, dtype=dtype)
                self.expand_conv.weight.copy_(expand.weight[:, : self.dim_conv])
                self.expand_rest.weight.copy_(expand.weight[:, self.dim_conv :])
                self.expand_rest.bias.copy_(expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_conv, x_rest = x[:, : self.dim_conv], x[:, self.dim_conv :]
        if self.form == "concat":
            h = self.expand(torch.cat((self.partial_conv(x_conv), x_rest), dim=1))
        elif self.form == "dense":
            h = self.expand_conv(self.partial_conv(x)) + self.expand_rest(x)
        else:
            h = self.expand_conv(self.partial_conv(x_conv)) + self.expand_rest(x_rest)
        return x + self.project(self.act(h))


class DeployedFasterNet(nn.Module):
    """An inference-only FasterNet (see :func:`deploy`); same outputs as the model it came from."""

    def __init__(self, model: FasterNet, form: str = "split") -> None:
        super().__init__()
        self.config = dict(model.config)
        self.form = form
        self.features_only = model.features_only
        self.num_classes = model.num_classes
        self.class_names = model.class_names
        self.eval_transform = model.eval_transform
        self.in_chans = model.in_chans
        self.min_input_size = model.min_input_size
        self.stem = fold_bn(model.patch_embed.proj, model.patch_embed.norm)
        stages = []
        for stage in model.stages:
            layers: list[nn.Module] = []
            if not isinstance(stage.downsample, nn.Identity):
                layers.append(fold_bn(stage.downsample.reduction, stage.downsample.norm))
            layers += [DeployedBlock(block, form) for block in stage.blocks]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        if self.features_only:
            self.feature_norms = copy.deepcopy(model.feature_norms)
        else:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.conv_head = copy.deepcopy(model.conv_head)
            self.act = copy.deepcopy(model.act)
            self.classifier = copy.deepcopy(model.classifier)
        super().train(False)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> DeployedFasterNet:
        if mode:
            raise RuntimeError("a deployed FasterNet is inference-only (BN is folded); train the original model")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an N x {self.in_chans} x H x W batch, got shape {tuple(x.shape)}")
        x = self.stem(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if self.features_only:
                outputs.append(self.feature_norms[i](x))
        if self.features_only:
            return outputs
        x = self.act(self.conv_head(self.global_pool(x))).flatten(1)
        return self.classifier(x)


@torch.no_grad()
def split_to_concat(block: DeployedBlock) -> DeployedBlock:
    """The same block in the concat form (one 1x1 expansion over [pconv(x1), x2]).

    Eager GPU kernels prefer it (one GEMM instead of two and an add); the fused kernel and the
    graph compilers take the split form. The copy shares nothing with ``block``.
    """
    if block.form != "split":
        raise ValueError(f"split_to_concat() takes a split-form block, not {block.form!r}")
    concat = copy.deepcopy(block)
    weight = torch.cat((block.expand_conv.weight, block.expand_rest.weight), dim=1)
    concat.expand = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True, device=weight.device, dtype=weight.dtype)
    concat.expand.weight.copy_(weight)
    concat.expand.bias.copy_(block.expand_rest.bias)
    del concat.expand_conv, concat.expand_rest
    concat.form = "concat"
    return concat


def deploy(model: FasterNet, *, form: str = "split") -> DeployedFasterNet:
    """An inference-only copy of ``model`` (classifier or features_only) with the same outputs.

    ``form`` picks how the partial convolution is computed: "split" (default: the next 1x1
    weight split by channels, no copy), "concat" (the official computation, BN folded) or
    "dense" (no channel slicing at all: the partial conv and the 1x1 read every channel, with
    zero weights for the ones they must not see; more MACs, but INT8 engines run it fastest).
    """
    if isinstance(model, DeployedFasterNet):
        return model
    if not isinstance(model, FasterNet):
        raise TypeError(f"deploy() takes a FasterNet, not {type(model).__name__}")
    return DeployedFasterNet(model, form)
