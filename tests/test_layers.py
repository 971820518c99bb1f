"""fasternet.layers in other networks: shapes, gradients, compile, and deploy/export/runner of any model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import fasternet
from fasternet._utils import relative_error
from fasternet.layers import C2fFaster, ConvNormAct, FasterBlock, FasterNetBlock, PartialConv


def _randomize_norms(model: nn.Module) -> nn.Module:
    """BN statistics and affine parameters away from their identity defaults, so folding is tested."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.3)
    return model


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "stride"),
    list(itertools.product([16], [16, 24, 8], [1, 2])),
)
@pytest.mark.parametrize("size", [(32, 32), (33, 27)])
def test_faster_block_shapes_for_every_width_change_and_stride(in_channels, out_channels, stride, size):
    block = FasterBlock(in_channels, out_channels, stride=stride)
    out = block(torch.randn(2, in_channels, *size))
    expected = tuple(math.floor(s / stride) for s in size)  # floor, like FasterNet's merging convolutions
    assert out.shape == (2, out_channels, *expected)
    merges = in_channels != out_channels or stride > 1
    assert isinstance(block.merge, ConvNormAct) == merges
    if merges:
        assert block.merge.conv.kernel_size == (stride, stride) and block.merge.conv.stride == (stride, stride)


@pytest.mark.parametrize(("in_channels", "out_channels", "n"), [(32, 32, 1), (16, 64, 2), (64, 32, 3)])
def test_c2f_faster_is_yolov8s_c2f_layout_with_faster_blocks(in_channels, out_channels, n):
    layer = C2fFaster(in_channels, out_channels, n=n)
    hidden = out_channels // 2
    assert layer.cv1.conv.out_channels == 2 * hidden and layer.cv2.conv.in_channels == (2 + n) * hidden
    assert len(layer.m) == n and all(isinstance(b.block, FasterNetBlock) for b in layer.m)
    assert isinstance(layer.cv1.act, nn.SiLU) and isinstance(layer.m[0].block.mlp[2], nn.ReLU)
    assert layer(torch.randn(1, in_channels, 21, 19)).shape == (1, out_channels, 21, 19)


def test_partial_conv_any_width_and_ratio():
    for dim, n_div in [(7, 2), (10, 5), (64, 8), (3, 1)]:
        conv = PartialConv(dim, n_div=n_div, kernel_size=5)
        assert conv.dim_conv == dim // n_div
        x = torch.randn(1, dim, 9, 9)
        out = conv(x)
        assert out.shape == x.shape and torch.equal(out[:, conv.dim_conv :], x[:, conv.dim_conv :])
    with pytest.raises(ValueError, match="odd"):
        PartialConv(16, kernel_size=4)
    with pytest.raises(ValueError, match="n_div"):
        PartialConv(3, n_div=4)


def _mixed_network() -> nn.Sequential:
    """What a user builds: plain convs and BN, FasterBlocks with stride and width changes, C2fFaster."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        FasterBlock(16, 32, stride=2, layer_scale_init_value=0.5),
        C2fFaster(32, 48, n=2),
        nn.Conv2d(48, 48, 1),
        nn.BatchNorm2d(48),
        FasterBlock(48, 24, act_layer="gelu"),
        C2fFaster(24, 24, n=1, shortcut=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 7),
    )
    return _randomize_norms(model).eval()


@pytest.mark.parametrize("form", ["split", "concat", "dense"])
def test_deploy_of_a_custom_network_equals_it_and_folds_every_norm(form):
    model = _mixed_network()
    deployed = fasternet.deploy(model, form=form)
    x = torch.randn(3, 3, 45, 51)
    with torch.no_grad():
        assert relative_error(deployed(x), model(x)) < 1e-5
    assert not [m for m in deployed.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not [m for m in deployed.modules() if isinstance(m, (FasterNetBlock, PartialConv))]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with pytest.raises(RuntimeError, match="inference-only"):
        deployed.train()
    assert fasternet.deploy(deployed) is deployed


def test_deploy_keeps_unknown_modules_and_their_norms():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm2d(8)  # not after a conv in a Sequential: kept
            self.block = FasterBlock(8, 8)

        def forward(self, x):
            return self.block(self.norm(x))

    model = _randomize_norms(Custom()).eval()
    deployed = fasternet.deploy(model)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        assert relative_error(deployed(x), model(x)) < 1e-5
    assert isinstance(deployed.module.norm, nn.BatchNorm2d)


def test_fasternets_deploy_is_the_same_mechanism():
    model = _randomize_norms(fasternet.create_model("fasternet_t0")).eval()
    deployed = fasternet.deploy(model)
    assert isinstance(deployed, fasternet.inference.deployed.DeployedFasterNet)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(deployed(x), model(x)) < 1e-5


def test_a_custom_network_exports_to_onnx_and_runs_in_onnxruntime_and_every_runner(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _mixed_network()
    path = fasternet.export(model, tmp_path / "custom.onnx", input_size=(1, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    for source, backend in [
        (path, "onnxruntime"),
        (model, "torch"),
        (model, "openvino"),
        (fasternet.deploy(model), "onnxruntime"),
    ]:
        run = fasternet.runner(source, backend=backend, input_size=(2, 3, 64, 64))
        assert relative_error(run(x), expected) < 1e-4, backend


def test_gradients_reach_every_parameter():
    model = _mixed_network().train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_the_layers_compile_with_fullgraph():
    torch._dynamo.reset()
    layer = nn.Sequential(FasterBlock(16, 32, stride=2), C2fFaster(32, 32, n=2)).eval()
    x = torch.randn(1, 16, 24, 24)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert relative_error(compiled(x), layer(x)) < 1e-5
    deployed = torch.compile(fasternet.deploy(layer), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert relative_error(deployed(x), layer(x)) < 1e-5


def test_layer_errors():
    with pytest.raises(ValueError, match="stride"):
        FasterBlock(8, 8, stride=0)
    with pytest.raises(ValueError, match="n counts"):
        C2fFaster(8, 8, n=0)
    with pytest.raises(ValueError, match="unknown activation"):
        FasterBlock(8, 8, act_layer="relu7")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fasternet.deploy("a model")
