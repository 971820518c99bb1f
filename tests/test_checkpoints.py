"""Checkpoints: every published layout, the official numbers reproduced, and every failure explained."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import fasternet
from conftest import REFERENCE, TINY, VARIANT_KEYS, load_reference, relative_error
from fasternet import CheckpointError, FasterNet, convert_state_dict, load_checkpoint
from fasternet.io.checkpoints import identify_variant, infer_config, read_checkpoint

NAMES = list(VARIANT_KEYS)
LAYOUT_OF = {"official": "official_classification", "timm": "timm"}


def shapes(state_dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state_dict.items()}


def meta_model(name: str, **kwargs) -> FasterNet:
    with torch.device("meta"):
        return fasternet.create_model(name, **kwargs)


def random_like(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
        for k, s in layout.items()
    }


# --- The three layouts, exactly --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["official", "timm"])
def test_classifier_state_dict_has_exactly_the_published_keys_and_shapes(name, layout, layouts):
    model = meta_model(name)
    converted = convert_state_dict(model.state_dict(), layout)
    assert shapes(converted) == layouts[VARIANT_KEYS[name]][LAYOUT_OF[layout]]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_state_dict_has_exactly_the_official_detection_keys(name, layouts):
    model = meta_model(name, features_only=True)
    converted = convert_state_dict(model.state_dict(), "official")
    assert shapes(converted) == layouts[VARIANT_KEYS[name]]["official_detection_backbone"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["official_classification", "timm", "official_detection_backbone"])
def test_every_layout_loads_strictly_into_every_variant(name, layout, layouts):
    expected = layouts[VARIANT_KEYS[name]][layout]
    with torch.device("meta"):
        state_dict = {k: torch.empty(s) for k, s in expected.items()}
    model = meta_model(name, features_only=layout == "official_detection_backbone")
    report = load_checkpoint(model, state_dict)
    assert report.layout == ("timm" if layout == "timm" else "official")
    assert report.left_initialized == [] and report.skipped == []


def test_values_land_in_the_right_place_and_round_trip_through_timm(layouts):
    official = random_like(layouts["t0"]["official_classification"])
    model = fasternet.create_model("fasternet_t0")
    load_checkpoint(model, official)
    assert torch.equal(model.stages[1].downsample.reduction.weight, official["stages.1.reduction.weight"])
    assert torch.equal(model.stages[2].blocks[3].mlp[0].weight, official["stages.4.blocks.3.mlp.0.weight"])
    assert torch.equal(model.conv_head.weight, official["avgpool_pre_head.1.weight"])
    assert torch.equal(model.classifier.bias, official["head.bias"])
    timm = convert_state_dict(model.state_dict(), "timm")
    assert shapes(timm) == layouts["t0"]["timm"]
    back = convert_state_dict(timm, "official")
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_detection_backbone_values_and_norms(layouts):
    official = random_like(layouts["t0"]["official_detection_backbone"])
    model = fasternet.create_model("fasternet_t0", features_only=True)
    load_checkpoint(model, official)
    assert torch.equal(model.feature_norms[2].running_var, official["norm4.running_var"])
    back = convert_state_dict(model.state_dict(), "official")
    assert all(torch.equal(back[k], official[k]) for k in official)


# --- The official numbers --------------------------------------------------------------------


@pytest.mark.parametrize("file", ["official_t1.pt", "official_small_gelu.pt"])
def test_official_classifier_outputs_are_reproduced(file):
    ref = load_reference(file)
    model = FasterNet(**ref["config"]).eval()
    report = load_checkpoint(model, ref["state_dict"])
    assert report.layout == "official"
    with torch.no_grad():
        out = model(ref["input"])
    assert out.shape == ref["output"].shape
    assert relative_error(out, ref["output"]) < 1e-5


def test_official_backbone_outputs_are_reproduced():
    ref = load_reference("official_small_relu_backbone.pt")
    config = dict(ref["config"])
    assert config.pop("fork_feat") is True
    model = FasterNet(**config, features_only=True).eval()
    load_checkpoint(model, ref["state_dict"])
    with torch.no_grad():
        outs = model(ref["input"])
    assert len(outs) == 4
    for out, expected in zip(outs, ref["output"], strict=True):
        assert out.shape == expected.shape
        assert relative_error(out, expected) < 1e-5


def test_official_t1_is_recognized_and_rebuilt_without_being_told():
    ref = load_reference("official_t1.pt")
    assert identify_variant(infer_config(ref["state_dict"])) == "fasternet_t1"
    model = fasternet.create_model_from_checkpoint(ref["state_dict"]).eval()
    assert model.config["act_layer"] == "gelu"
    with torch.no_grad():
        assert relative_error(model(ref["input"]), ref["output"]) < 1e-5


def test_mmdet_mask_rcnn_checkpoint_gives_its_backbone():
    ref = torch.load(REFERENCE / "mmdet_maskrcnn_ref.pt", weights_only=True)
    checkpoint = ref["checkpoint"]  # {meta, state_dict} with backbone./neck./rpn_head./roi_head.
    config = ref["backbone_config"]
    model = FasterNet(**config, features_only=True)
    report = load_checkpoint(model, checkpoint)
    assert report.layout == "official" and report.left_initialized == []
    expected = checkpoint["state_dict"]["backbone.norm6.running_mean"].float()
    assert torch.equal(model.feature_norms[3].running_mean, expected)


# --- Containers and file formats -------------------------------------------------------------


@pytest.fixture
def tiny_pair():
    torch.manual_seed(0)
    source = FasterNet(**TINY)
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    return source, FasterNet(**TINY)


def assert_same_weights(a: FasterNet, b: FasterNet):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: convert_state_dict(sd, "official"), id="official-raw"),
        pytest.param(lambda sd: {"state_dict": convert_state_dict(sd, "official"), "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, id="model"),
        pytest.param(lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1}, id="lightning"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="ddp"),
        pytest.param(lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, id="compiled"),
        pytest.param(
            lambda sd: {
                "meta": {"mmdet_version": "2.25.0"},
                "state_dict": {
                    **{f"backbone.{k}": v for k, v in sd.items() if not k.startswith(("conv_head", "classifier"))},
                    "neck.lateral_convs.0.conv.weight": torch.zeros(4, 16, 1, 1),
                },
            },
            id="mmdet",
        ),
    ],
)
def test_wrapped_checkpoints_load(wrap, tiny_pair, tmp_path):
    source, target = tiny_pair
    obj = wrap(source.state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    if "meta" in obj:  # an mmdet detection backbone has no classification head: load it into a backbone
        target = FasterNet(**TINY, features_only=True)
    load_checkpoint(target, path)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    assert all(k in source.state_dict() for k in loaded if not k.startswith("feature_norms."))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_layout_in_each_file_format(suffix, tiny_pair, tmp_path):
    source, target = tiny_pair
    state = convert_state_dict(source.state_dict(), "timm")
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    load_checkpoint(target, path)
    assert_same_weights(source, target)


def test_file_format_is_read_from_the_content_not_the_name(tiny_pair, tmp_path):
    source, target = tiny_pair
    path = tmp_path / "weights.pth"  # really safetensors
    save_file(source.state_dict(), str(path))
    load_checkpoint(target, path)
    assert_same_weights(source, target)


def test_save_and_rebuild_from_metadata(tmp_path):
    model = FasterNet(**{**TINY, "act_layer": "relu", "mlp_ratio": 3.0, "n_div": 2})
    path = fasternet.save_checkpoint(model, tmp_path / "m.safetensors", class_names=[str(i) for i in range(10)])
    assert not [p for p in tmp_path.iterdir() if p.name != "m.safetensors"], "no temporary file left behind"
    rebuilt = fasternet.create_model_from_checkpoint(path)
    assert rebuilt.config == model.config
    assert rebuilt.class_names == [str(i) for i in range(10)]
    assert_same_weights(model, rebuilt)
    assert read_checkpoint(path).layout == "fasternet"


def test_finetuning_keeps_everything_but_the_classifier(caplog, layouts):
    official = random_like(layouts["t0"]["official_classification"])
    model = fasternet.create_model("fasternet_t0", num_classes=10)
    init_classifier = model.classifier.weight.clone()
    with caplog.at_level(logging.WARNING, logger="fasternet"):
        report = load_checkpoint(model, official)
    assert "1000 classes" in caplog.text and "left initialized" in caplog.text
    assert set(report.skipped) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(model.classifier.weight, init_classifier)
    assert torch.equal(model.conv_head.weight, official["avgpool_pre_head.1.weight"])


def test_backbone_from_a_classification_checkpoint(layouts, caplog):
    official = random_like(layouts["t0"]["official_classification"])
    model = fasternet.create_model("fasternet_t0", features_only=True)
    with caplog.at_level(logging.INFO, logger="fasternet"):
        report = load_checkpoint(model, official)
    assert "head.weight" not in report.skipped  # reported in our own names
    assert "classifier.weight" in report.skipped
    assert len(report.left_initialized) == 20  # four norms x 5 tensors
    assert torch.equal(model.stages[3].blocks[1].mlp[3].weight, official["stages.6.blocks.1.mlp.3.weight"])


# --- Errors ----------------------------------------------------------------------------------


@pytest.fixture
def good_file(tiny_pair, tmp_path):
    path = tmp_path / "good.pth"
    torch.save(tiny_pair[0].state_dict(), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(FasterNet(**TINY), tmp_path / "nope.pth")


def test_truncated_pth(good_file, tmp_path):
    data = good_file.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(FasterNet(**TINY), bad)


def test_truncated_safetensors(tiny_pair, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(tiny_pair[0].state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_checkpoint(FasterNet(**TINY), path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00" * 7, "not a checkpoint"),
        (bytes(range(7, 250)) * 16, "not a checkpoint"),
        (b"<html>404 Not Found</html>", "failed download"),
    ],
)
def test_garbage_files(content, message, tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(FasterNet(**TINY), path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(FasterNet(**TINY), path)


@pytest.mark.parametrize("obj, message", [([1, 2, 3], "not a state dict"), ({"epoch": 3, "name": "x"}, "no tensors")])
def test_not_a_state_dict(obj, message, tmp_path):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(FasterNet(**TINY), path)


def test_unknown_layout_names_its_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(CheckpointError, match=r"not a FasterNet checkpoint.*conv1\.weight"):
        load_checkpoint(FasterNet(**TINY), path)


def test_missing_and_unexpected_keys_are_listed(tiny_pair):
    source, target = tiny_pair
    state = source.state_dict()
    del state["stages.1.blocks.1.mlp.0.weight"]
    state["stages.1.blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(stages\.1\.blocks\.1\.mlp\.0\.weight\).*"
        r"1 unexpected keys \(stages\.1\.blocks\.1\.extra\.weight\)",
    ):
        load_checkpoint(target, state)
    report = load_checkpoint(target, state, strict=False)
    assert report.left_initialized == ["stages.1.blocks.1.mlp.0.weight"]
    assert report.unexpected == ["stages.1.blocks.1.extra.weight"]


def test_another_variant_is_named(layouts):
    t1 = {k: torch.zeros(s) for k, s in layouts["t1"]["official_classification"].items()}
    model = fasternet.create_model("fasternet_t0")
    with pytest.raises(
        CheckpointError,
        match=r"this checkpoint is fasternet_t1 \(embed_dim 64.*the model is "
        r"fasternet_t0 \(embed_dim 40",
    ):
        load_checkpoint(model, t1)


def test_shape_mismatch_is_an_error_even_when_not_strict(tiny_pair):
    source, _ = tiny_pair
    other = FasterNet(**{**TINY, "mlp_ratio": 3.0})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(other, source.state_dict(), strict=False)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(FasterNet(**TINY), path)
    assert not marker.exists()


def test_a_legacy_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(str(marker)), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(FasterNet(**TINY), path)
    assert not marker.exists()


def test_a_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(FasterNet(**TINY), path)


def test_convert_state_dict_rejects_unknown_layout(tiny_pair):
    with pytest.raises(ValueError, match="unknown layout"):
        convert_state_dict(tiny_pair[0].state_dict(), "keras")


def test_unregistered_architecture_needs_its_activation(tiny_pair):
    with pytest.raises(CheckpointError, match="act_layer"):
        fasternet.create_model_from_checkpoint(convert_state_dict(tiny_pair[0].state_dict(), "official"))
    model = fasternet.create_model_from_checkpoint(tiny_pair[0].state_dict(), act_layer="gelu")
    assert_same_weights(tiny_pair[0], model)
