"""The fused FasterNet block as a PyTorch custom operator, usable on any device.

``torch.ops.fasternet.fused_block`` runs the Triton kernel on CUDA tensors and the pure-torch
reference of the same computation elsewhere; its fake (meta) implementation lets
``torch.compile(fullgraph=True)`` trace through it. (``torch.library.triton_op`` breaks
``torch.compile`` on CPU; ``custom_op`` with a per-device kernel does not.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fasternet.inference.deployed import DeployedBlock, DeployedFasterNet, deploy, split_to_concat
from fasternet.inference.timing import median_seconds
from fasternet.models import FasterNet

__all__ = [
    "FusedBlock",
    "choose_fused_stages",
    "fuse_blocks",
    "fused_block_reference",
    "pack_block",
    "stage_block_inputs",
]


def fused_block_reference(
    x: torch.Tensor,
    pconv_weight: torch.Tensor,
    expand_conv_weight: torch.Tensor,
    expand_rest_weight: torch.Tensor,
    expand_bias: torch.Tensor,
    project_weight: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """The block computed with plain torch ops from the packed weights (fp32 accumulation)."""
    cp, hid = expand_conv_weight.shape
    xf = x.float()
    taps = pconv_weight.float().reshape(3, 3, cp, cp).permute(3, 2, 0, 1)  # (out, in, kh, kw)
    p = F.conv2d(xf[:, :cp], taps, padding=1).to(x.dtype).float()
    hidden = F.conv2d(p, expand_conv_weight.float().t()[:, :, None, None])
    hidden = hidden + F.conv2d(xf[:, cp:], expand_rest_weight.float().t()[:, :, None, None])
    hidden = hidden + expand_bias.float()[None, :, None, None]
    hidden = F.relu(hidden) if act == "relu" else F.gelu(hidden)
    out = xf + F.conv2d(hidden.to(x.dtype).float(), project_weight.float().t()[:, :, None, None])
    return out.to(x.dtype).contiguous(memory_format=torch.channels_last)


# The reference is the op's CPU (and meta-shaped) implementation; CUDA registers the Triton kernel.
fused_block = torch.library.custom_op("fasternet::fused_block", fused_block_reference, mutates_args=())


@fused_block.register_kernel("cuda")
def _fused_block_cuda(x, pconv_weight, expand_conv_weight, expand_rest_weight, expand_bias, project_weight, act):
    from fasternet.inference.kernels.triton_block import launch_block  # Triton is imported only on a GPU

    return launch_block(x, pconv_weight, expand_conv_weight, expand_rest_weight, expand_bias, project_weight, act)


@fused_block.register_fake
def _fused_block_fake(x, pconv_weight, expand_conv_weight, expand_rest_weight, expand_bias, project_weight, act):
    return torch.empty_like(x, memory_format=torch.channels_last)


def pack_block(block: DeployedBlock) -> dict[str, torch.Tensor]:
    """A split-form deployed block's weights in the kernel's layouts (see ``launch_block``)."""
    if block.form != "split":
        raise ValueError(f"the fused kernel takes split-form blocks, not {block.form!r}")
    cp = block.dim_conv
    return {
        "pconv_weight": block.partial_conv.weight.detach().permute(2, 3, 1, 0).reshape(9, cp, cp).contiguous(),
        "expand_conv_weight": block.expand_conv.weight.detach()[:, :, 0, 0].t().contiguous(),
        "expand_rest_weight": block.expand_rest.weight.detach()[:, :, 0, 0].t().contiguous(),
        "expand_bias": block.expand_rest.bias.detach().contiguous(),
        "project_weight": block.project.weight.detach()[:, :, 0, 0].t().contiguous(),
    }


class FusedBlock(nn.Module):
    """A deployed block that runs as one ``fasternet::fused_block`` call."""

    def __init__(self, block: DeployedBlock) -> None:
        super().__init__()
        if isinstance(block.act, nn.ReLU):
            self.act = "relu"
        elif isinstance(block.act, nn.GELU) and block.act.approximate == "none":
            self.act = "gelu"
        else:
            raise ValueError(f"the fused kernel implements ReLU and GELU, not {type(block.act).__name__}")
        for name, tensor in pack_block(block).items():
            self.register_buffer(name, tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.fasternet.fused_block(
            x.contiguous(memory_format=torch.channels_last), self.pconv_weight, self.expand_conv_weight,
            self.expand_rest_weight, self.expand_bias, self.project_weight, self.act,
        )  # fmt: skip


def fuse_blocks(
    model: FasterNet | DeployedFasterNet, stages: Sequence[bool] | None = None, unfused_form: str = "split"
) -> DeployedFasterNet:
    """A deployed model whose blocks are fused-kernel calls (channels-last activations).

    ``stages`` says per stage whether to fuse its blocks (default: all); the others stay
    cuDNN/cuBLAS convolutions, in ``unfused_form`` ("split" or "concat": eager PyTorch on an
    H200 ran concat-form blocks 13% faster). :func:`choose_fused_stages` picks the stages.
    """
    if unfused_form not in ("split", "concat"):
        raise ValueError(f"unfused_form is 'split' or 'concat', not {unfused_form!r}")
    deployed = deploy(model, form="split") if isinstance(model, FasterNet) else model
    if deployed.form != "split":
        raise ValueError("fuse_blocks() needs the split form: deploy(model, form='split')")
    stages = [True] * len(deployed.stages) if stages is None else list(stages)
    if len(stages) != len(deployed.stages):
        raise ValueError(f"stages has {len(stages)} entries for a model with {len(deployed.stages)} stages")
    for stage, fuse in zip(deployed.stages, stages, strict=True):
        for i, layer in enumerate(stage):
            if fuse and isinstance(layer, DeployedBlock):
                stage[i] = FusedBlock(layer)
            elif isinstance(layer, DeployedBlock) and unfused_form == "concat":
                stage[i] = split_to_concat(layer)
    return deployed.to(memory_format=torch.channels_last)


@torch.inference_mode()
def stage_block_inputs(
    deployed: DeployedFasterNet, x: torch.Tensor
) -> Iterator[tuple[list[DeployedBlock], torch.Tensor]]:
    """Each stage's blocks and the tensor they get (after the stem and the stage's merging layer)."""
    x = deployed.stem(x)
    for stage in deployed.stages:
        layers = list(stage)
        start = 0 if isinstance(layers[0], DeployedBlock) else 1
        x = nn.Sequential(*layers[:start])(x).contiguous(memory_format=torch.channels_last)
        yield layers[start:], x
        x = nn.Sequential(*layers[start:])(x)


@torch.inference_mode()
def choose_fused_stages(
    deployed: DeployedFasterNet,
    input_size: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype,
    repeats: int = 10,
    unfused_form: str = "split",
    margin: float = 1.0,
) -> tuple[list[bool], list[dict[str, float]]]:
    """Per stage, whether the fused kernel beats the unfused block on this device and input size.

    The fused kernel wins where the block is memory-bound (wide images, few channels); with many
    channels and few pixels the two GEMMs are compute-bound and cuBLAS is faster. Timing both on
    the real shapes settles it per GPU. A stage is fused when the kernel is ``margin`` times faster
    than the unfused blocks. Returns the choice and the timings (ms per stage).
    """
    if deployed.form != "split":
        raise ValueError("choose_fused_stages() needs the split form: deploy(model, form='split')")
    model = copy.deepcopy(deployed).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x = torch.randn(*input_size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    choice, timings = [], []
    for blocks, x_stage in stage_block_inputs(model, x):
        plain = nn.Sequential(*[split_to_concat(b) if unfused_form == "concat" else b for b in blocks])
        fused = nn.Sequential(*[FusedBlock(b) for b in blocks])
        unfused_s = median_seconds(lambda m=plain, x=x_stage: m(x), repeats=repeats)
        fused_s = median_seconds(lambda m=fused, x=x_stage: m(x), repeats=repeats)
        choice.append(fused_s * margin < unfused_s)
        timings.append({"unfused_ms": 1e3 * unfused_s, "fused_ms": 1e3 * fused_s})
    return choice, timings
