"""Deploy mode: an inference-only copy of any model built with PConv, BN folded, PConv copy-free.

The training-time block computes ``cat(conv3x3(x[:, :cp]), x[:, cp:])`` and feeds it to a 1x1
convolution. Concatenating copies the untouched channels, and the official "slicing" variant
clones the whole tensor (without the clone it corrupts the residual shortcut). Here the first 1x1
convolution's weight is split by input channels instead::

    h = W[:, :cp] @ conv3x3(x[:, :cp]) + W[:, cp:] @ x[:, cp:] + b

which is the same computation (same MACs) with no copy and the shortcut ``x`` untouched. Every
BN is folded into the convolution before it (or the one after the PConv, for the block's BN),
and layer scale into the last 1x1 convolution. The output norms of a features_only model act on
stage outputs that also feed the next stage, so they stay as per-channel affine layers.

One mechanism serves every model: a table of conversions per module type (FasterNet's own
layers, ``ConvNormAct``, FasterNet itself) and, for anything else, a walk through its children
in which every ``Conv2d -> BatchNorm2d`` pair of an ``nn.Sequential`` is folded too. Modules it
does not know are kept as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from fasternet.layers import ConvNormAct, FasterNetBlock, PatchEmbed, PatchMerging
from fasternet.models import FasterNet

__all__ = [
    "PCONV_FORMS",
    "DeployedBlock",
    "DeployedFasterNet",
    "DeployedModule",
    "deploy",
    "fold_bn",
    "is_deployed",
    "split_to_concat",
]

PCONV_FORMS = ("split", "concat", "dense")


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` in eval mode (a new module; the inputs are untouched)."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + beta)
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
        self.shortcut = block.shortcut
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
        out = self.project(self.act(h))
        return x + out if self.shortcut else out


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
        self.stem = _convert(model.patch_embed, form)
        stages = []
        for stage in model.stages:
            layers: list[nn.Module] = []
            if not isinstance(stage.downsample, nn.Identity):
                layers.append(_convert(stage.downsample, form))
            layers += [_convert(block, form) for block in stage.blocks]
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


class DeployedModule(nn.Module):
    """Any model after :func:`deploy`: inference-only, its known layers folded, same outputs."""

    def __init__(self, module: nn.Module, form: str) -> None:
        super().__init__()
        self.module = module
        self.form = form
        self.features_only = False
        self.class_names = getattr(module, "class_names", None)
        super().train(False)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> DeployedModule:
        if mode:
            raise RuntimeError("a deployed model is inference-only (BN is folded); train the original model")
        return super().train(False)

    def forward(self, x: torch.Tensor):
        return self.module(x)


def is_deployed(model: nn.Module) -> bool:
    """Whether ``model`` came from :func:`deploy`."""
    return isinstance(model, (DeployedFasterNet, DeployedModule))


# --------------------------------------------------------------------------------------------
# The conversions: module type -> its inference-only form


def _convert_conv_norm_act(module: ConvNormAct, form: str) -> nn.Module:
    return nn.Sequential(fold_bn(module.conv, module.bn), module.act)


_CONVERSIONS: dict[type[nn.Module], Callable[[nn.Module, str], nn.Module]] = {
    FasterNet: lambda model, form: DeployedFasterNet(model, form),
    FasterNetBlock: lambda block, form: DeployedBlock(block, form),
    PatchEmbed: lambda stem, form: fold_bn(stem.proj, stem.norm),
    PatchMerging: lambda merge, form: fold_bn(merge.reduction, merge.norm),
    ConvNormAct: _convert_conv_norm_act,
}


def _is_foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.num_features == conv.out_channels
    )


def _convert(module: nn.Module, form: str) -> nn.Module:
    """The inference-only form of ``module``: by its type, else its children converted in place."""
    for cls in type(module).__mro__:
        if cls in _CONVERSIONS:
            return _CONVERSIONS[cls](module, form)
    if isinstance(module, nn.Sequential):
        children = list(module.children())
        keys = list(module._modules)
        for i, child in enumerate(children):
            if i + 1 < len(children) and _is_foldable(child, children[i + 1]):
                module._modules[keys[i]] = fold_bn(child, children[i + 1])
                module._modules[keys[i + 1]] = nn.Identity()
                children[i + 1] = None  # already folded
            elif child is not None:
                module._modules[keys[i]] = _convert(child, form)
        return module
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child, form))
    return module


def deploy(model: nn.Module, *, form: str = "split") -> DeployedFasterNet | DeployedModule:
    """An inference-only copy of ``model`` with the same outputs.

    A FasterNet (classifier or features_only) becomes a :class:`DeployedFasterNet`; any other
    model a :class:`DeployedModule` in which every FasterNet block (``FasterBlock``, ``C2fFaster``,
    ...) runs its partial convolution in the chosen ``form``, every ``ConvNormAct``, stem and
    merging layer has its BN folded, and so does every ``Conv2d -> BatchNorm2d`` pair of an
    ``nn.Sequential``; other modules are kept as they are.

    ``form`` picks how a partial convolution is computed: "split" (default: the next 1x1
    weight split by channels, no copy), "concat" (the official computation, BN folded) or
    "dense" (no channel slicing at all: the partial conv and the 1x1 read every channel, with
    zero weights for the ones they must not see; more MACs, but INT8 engines run it fastest).
    """
    if form not in PCONV_FORMS:
        raise ValueError(f"unknown PConv form {form!r}; choose one of {PCONV_FORMS}")
    if is_deployed(model):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy() takes a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, FasterNet):
        return DeployedFasterNet(model, form)
    with torch.no_grad():
        converted = _convert(copy.deepcopy(model).eval(), form)
    return DeployedModule(converted, form)
