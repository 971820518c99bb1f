"""The converted mmdet Mask R-CNN reproduces mmdet's own outputs on the reference checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from fasternet.detection import load_mmdet
from fasternet.io.checkpoints import CheckpointError
from paths import REFERENCE


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE / "mmdet_maskrcnn_ref.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(reference):
    height, width = reference["input"].shape[-2:]
    # The reference input is already normalized and not resized: identity transform.
    model = load_mmdet(
        reference["checkpoint"],
        min_size=height,
        max_size=width,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        size_divisible=1,
    )
    return model.eval()


def test_fpn_and_rpn_outputs_agree_to_float_rounding(reference, converted):
    x = reference["input"].float()
    with torch.no_grad():
        features = converted.backbone(x)
        objectness, deltas = converted.rpn.head(list(features.values()))
    for ours, theirs in zip(features.values(), reference["fpn"], strict=True):
        theirs = theirs.float()
        assert ours.shape == theirs.shape
        assert ((ours - theirs).abs().max() / theirs.abs().max()) < 1e-3  # references stored in fp16
    for ours, theirs in zip(objectness + deltas, reference["rpn_cls"] + reference["rpn_reg"], strict=True):
        theirs = theirs.float()
        assert ((ours - theirs).abs().max() / theirs.abs().max()) < 1e-3


def test_every_reference_detection_is_found(reference, converted):
    x = reference["input"].float()[0]
    with torch.no_grad():
        output = converted([x])[0]
    ref_masks = np.unpackbits(reference["masks_packed"].numpy(), axis=-1)[..., : reference["mask_shape"][-1]]
    ref_masks = torch.from_numpy(ref_masks.astype(bool))
    masks = output["masks"][:, 0] >= reference["test_cfg"]["rcnn"]["mask_thr_binary"]
    labels = output["labels"] - 1  # torchvision's background is label 0
    ious = box_iou(reference["boxes"].float(), output["boxes"])
    assert len(reference["boxes"]) == 100
    for i in range(len(reference["boxes"])):
        candidates = torch.where((labels == reference["labels"][i]) & (ious[i] >= 0.98))[0]
        assert len(candidates), f"reference detection {i} (class {int(reference['labels'][i])}) not found"
        j = candidates[ious[i, candidates].argmax()]
        inter = (masks[j] & ref_masks[i]).sum().item()
        union = (masks[j] | ref_masks[i]).sum().item()
        assert union == 0 or inter / union >= 0.9, f"detection {i}: mask IoU {inter / union:.3f}"
        assert abs(output["scores"][j] - reference["scores"][i]) < 1e-3


def test_converter_errors_are_clear(reference):
    with pytest.raises(CheckpointError, match="not an mmdet checkpoint"):
        load_mmdet({"model": {}})
    state = dict(reference["checkpoint"]["state_dict"])
    no_heads = {k: v for k, v in state.items() if not k.startswith("roi_head.")}
    with pytest.raises(CheckpointError, match="no roi_head"):
        load_mmdet({"state_dict": no_heads})
    resnet = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    resnet["backbone.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    with pytest.raises(CheckpointError, match="not a FasterNet"):
        load_mmdet({"state_dict": resnet})
    wrong = dict(state)
    wrong["roi_head.bbox_head.fc_reg.weight"] = torch.zeros(4, 1024)
    with pytest.raises(CheckpointError, match="class-agnostic"):
        load_mmdet({"state_dict": wrong})
