"""The model: exact to the paper and the official code, any configuration, clear input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fasternet
from conftest import TINY, VARIANT_KEYS
from fasternet import FasterNet
from fasternet.layers import DropPath, PartialConv

PAPER_NAMES = ["fasternet_t0", "fasternet_t1", "fasternet_t2", "fasternet_s", "fasternet_m", "fasternet_l"]


def meta_model(name: str, **kwargs) -> FasterNet:
    with torch.device("meta"):
        return fasternet.create_model(name, **kwargs)


def test_list_models_is_the_six_variants():
    assert fasternet.list_models() == PAPER_NAMES


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_exact_params_and_macs(name, paper):
    exact = paper["exact_counts_official_code"]
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == exact["params"][name]
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    macs = counter.get_total_flops() // 2
    assert round(macs / 1e9, 4) == exact["macs_224_conv_and_linear_G"][name]
    # The paper's Table 3 rounds the same numbers (its FLOPs also count BN, hence "about").
    params_m, flops_g = paper["imagenet_table3"][name][:2]
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - params_m) < 0.1
    assert abs(macs / 1e9 - flops_g) < 0.04


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_variant_config_matches_official(name, layouts):
    official = layouts[VARIANT_KEYS[name]]["config"]
    config = meta_model(name).config
    for field in (
        "embed_dim",
        "mlp_ratio",
        "n_div",
        "feature_dim",
        "patch_size",
        "patch_stride",
        "patch_size2",
        "patch_stride2",
        "drop_path_rate",
        "layer_scale_init_value",
    ):
        assert config[field] == official[field], field
    assert config["depths"] == official["depths"]
    assert config["act_layer"] == official["act_layer"].lower()


def test_stochastic_depth_rises_linearly_over_all_blocks():
    model = meta_model("fasternet_m")
    rates = []
    for stage in model.stages:
        for block in stage.blocks:
            rates.append(block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0)
    expected = torch.linspace(0, 0.2, 28).tolist()
    assert rates == pytest.approx(expected, abs=1e-7)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)


def test_pconv_convolves_a_quarter_and_passes_the_rest_untouched():
    pconv = PartialConv(64, n_div=4)
    x = torch.randn(2, 64, 9, 11)
    x_before = x.clone()
    y = pconv(x)
    assert pconv.partial_conv3.weight.shape == (16, 16, 3, 3)
    assert torch.equal(y[:, 16:], x[:, 16:])
    torch.testing.assert_close(y[:, :16], nn.functional.conv2d(x[:, :16], pconv.partial_conv3.weight, padding=1))
    assert torch.equal(x, x_before), "PConv must not modify its input (the block's shortcut)"


def test_block_keeps_its_shortcut_intact():
    model = FasterNet(**TINY).eval()
    block = model.stages[0].blocks[0]
    x = torch.randn(1, 16, 8, 8)
    x_before = x.clone()
    y = block(x)
    assert torch.equal(x, x_before)
    expected = x + block.mlp(block.spatial_mixing(x))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("act", ["gelu", "GELU", "Gelu", nn.GELU])
def test_act_layer_accepts_names_in_any_case_and_classes(act):
    model = FasterNet(**{**TINY, "act_layer": act})
    assert isinstance(model.stages[0].blocks[0].mlp[2], nn.GELU)
    assert model.config["act_layer"] == "gelu"


def test_act_layer_relu_and_unknown():
    assert isinstance(FasterNet(**{**TINY, "act_layer": "ReLU"}).act, nn.ReLU)
    with pytest.raises(ValueError, match="did you mean 'GELU'"):
        FasterNet(**{**TINY, "act_layer": "gelo"})


def test_unknown_keyword_arguments_are_errors():
    with pytest.raises(TypeError, match="fork_feat"):
        FasterNet(fork_feat=True)
    with pytest.raises(TypeError, match="pconv_fw_type"):
        fasternet.create_model("fasternet_t0", pconv_fw_type="slicing")


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'fasternet_t0'"):
        fasternet.create_model("fasternet-t0")


def test_overrides_replace_variant_arguments():
    model = meta_model("fasternet_s", drop_path_rate=0.0, num_classes=7)
    assert model.config["drop_path_rate"] == 0.0
    assert model.classifier.out_features == 7


def _expected_size(size: int, stages: int = 4) -> list[int]:
    sizes = [(size - 4) // 4 + 1]
    for _ in range(stages - 1):
        sizes.append((sizes[-1] - 2) // 2 + 1)
    return sizes


@pytest.mark.parametrize("hw", [(224, 224), (97, 131), (33, 65), (32, 32)])
def test_features_only_strides_channels_and_odd_sizes(hw):
    model = FasterNet(**{**TINY, "features_only": True}).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, *hw))
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert [f.shape[2] for f in feats] == _expected_size(hw[0])
    assert [f.shape[3] for f in feats] == _expected_size(hw[1])
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    assert [i["num_chs"] for i in model.feature_info] == [16, 32, 64, 128]


def test_features_only_outputs_go_through_their_own_norms():
    model = FasterNet(**{**TINY, "features_only": True}).eval()
    for norm in model.feature_norms:
        norm.running_mean.uniform_(-1, 1)
        norm.weight.data.uniform_(0.5, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        normed = model(x)
        raw = model.forward_intermediates(x)
    for i, (a, b) in enumerate(zip(normed, raw, strict=True)):
        torch.testing.assert_close(a, model.feature_norms[i](b))


def test_classifier_api():
    model = FasterNet(**TINY).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.config["num_classes"] == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)
    with pytest.raises(RuntimeError, match="features_only"):
        FasterNet(**{**TINY, "features_only": True}).forward_head(feats)


@pytest.mark.parametrize(
    "shape, message",
    [((3, 64, 64), "4-D"), ((1, 1, 64, 64), "3 input channels"), ((1, 3, 31, 64), ">= 32"), ((1, 3, 64, 16), ">= 32")],
)
def test_bad_input_shapes_raise_clear_errors(shape, message):
    model = FasterNet(**TINY)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_gradients_flow_to_every_parameter_in_train_mode():
    torch.manual_seed(0)
    model = FasterNet(**{**TINY, "drop_path_rate": 0.1, "layer_scale_init_value": 1e-2}).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = FasterNet(**TINY).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_drop_path_scales_kept_samples():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    y = drop(torch.ones(1000, 4))
    kept = y[:, 0] > 0
    assert torch.all(y[kept] == 2.0) and 350 < kept.sum() < 650
    assert torch.equal(drop.eval()(torch.ones(3, 4)), torch.ones(3, 4))


def test_torch_export_with_dynamic_batch_matches_eager():
    model = FasterNet(**TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    for n in (1, 3):
        xn = torch.randn(n, 3, 64, 64)
        torch.testing.assert_close(exported.module()(xn), model(xn))
