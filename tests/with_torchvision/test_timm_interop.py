"""Our checkpoints in timm's FasterNet and timm's in ours, with the same outputs."""

from __future__ import annotations

import pytest
import torch

import fasternet
from fasternet import convert_state_dict, load_checkpoint

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_t2"])
def test_our_weights_run_in_timm_and_back(name, tmp_path):
    torch.manual_seed(0)
    ours = fasternet.create_model(name).eval()
    for module in ours.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    theirs = timm.create_model(name, pretrained=False).eval()
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), "timm"), strict=True)
    x = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "timm.pth"
    torch.save(theirs.state_dict(), path)
    back = fasternet.create_model(name).eval()
    report = load_checkpoint(back, path)
    assert report.layout == "timm"
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-5)


def test_save_pretrained_folders_load_in_timm_and_timms_own_hub_layout_loads_here(tmp_path):
    torch.manual_seed(0)
    ours = fasternet.create_model("fasternet_t0", num_classes=5).eval()
    ours.class_names = ["a", "b", "c", "d", "e"]
    folder = fasternet.save_pretrained(ours, tmp_path / "ours")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert theirs.num_classes == 5 and theirs.pretrained_cfg["label_names"] == ours.class_names
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    # timm's own export of its model (push_to_hub's layout) reads back here
    timm_folder = tmp_path / "timm"
    timm.models.save_for_hf(theirs, timm_folder)
    back = fasternet.create_model(timm_folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-5)
