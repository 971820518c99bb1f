"""The released mmdet 2.x Mask R-CNN checkpoints (FasterNet-S/M/L, 1x COCO) as torchvision models.

mmdet's key layout is mapped onto :func:`fasternet.detection.create_detector`'s Mask R-CNN, with
the differences that change outputs handled (the model itself is built by
:func:`fasternet.detection.load_mmdet`): mmdet puts the background class last in the
classifier and has no background rows in the box regressor and the mask logits (torchvision
has background first, everywhere); the backbone carries the official output norms. Box coder
stds (0.1, 0.1, 0.2, 0.2) are torchvision's weights (10, 10, 5, 5); RPN's are (1, 1, 1, 1) in
both. Anchors, RoIAlign and mask pasting follow mmdet (see ``models.py``), and the test
settings are mmdet's: 1000 proposals per level and after NMS at IoU 0.7, score threshold 0.05,
NMS 0.5, 100 detections, masks binarized at 0.5 (``predict``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch

from fasternet.io.checkpoints import CheckpointError, convert_state_dict, identify_variant, infer_config, read_file
from fasternet.io.hub import resolve_checkpoint
from fasternet.models import get_variant

__all__ = ["COCO_CLASSES", "MMDET_TEST_SETTINGS", "MMDetCheckpoint", "mmdet_to_torchvision", "read_mmdet"]
MMDET_TEST_SETTINGS = dict(
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    rpn_score_thresh=0.0,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

_NECK = {"lateral_convs": "inner_blocks", "fpn_convs": "layer_blocks"}


def _split(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        parts.setdefault(head, {})[rest] = value.float() if value.is_floating_point() else value
    return parts


def mmdet_to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torchvision Mask R-CNN keys for an mmdet FasterNet Mask R-CNN state dict, and what it is."""
    parts = _split(state_dict)
    missing = [part for part in ("backbone", "neck", "rpn_head", "roi_head") if part not in parts]
    if missing:
        raise CheckpointError(
            f"not an mmdet Mask R-CNN checkpoint: no {', '.join(missing)} weights "
            f"(found: {', '.join(sorted(parts)) or 'nothing'})"
        )
    out: dict[str, torch.Tensor] = {}
    backbone = convert_state_dict(parts["backbone"], "fasternet")
    if "patch_embed.proj.weight" not in backbone or not any(k.startswith("feature_norms.") for k in backbone):
        raise CheckpointError(
            "the checkpoint's backbone is not a FasterNet detection backbone "
            "(no patch_embed or no output norms norm0/2/4/6)"
        )
    out.update({f"backbone.body.{k}": v for k, v in backbone.items()})
    for key, value in parts["neck"].items():  # lateral_convs.0.conv.weight -> inner_blocks.0.0.weight
        kind, index, _, leaf = key.split(".")
        out[f"backbone.fpn.{_NECK[kind]}.{index}.0.{leaf}"] = value
    rpn = parts["rpn_head"]
    for leaf in ("weight", "bias"):
        out[f"rpn.head.conv.0.0.{leaf}"] = rpn[f"rpn_conv.{leaf}"]
        out[f"rpn.head.cls_logits.{leaf}"] = rpn[f"rpn_cls.{leaf}"]
        out[f"rpn.head.bbox_pred.{leaf}"] = rpn[f"rpn_reg.{leaf}"]
    roi = parts["roi_head"]
    fc_cls_w, fc_cls_b = roi["bbox_head.fc_cls.weight"], roi["bbox_head.fc_cls.bias"]
    num_classes = fc_cls_w.shape[0] - 1
    if roi["bbox_head.fc_reg.weight"].shape[0] != 4 * num_classes:
        raise CheckpointError(
            "class-agnostic box regression is not supported (fc_reg has "
            f"{roi['bbox_head.fc_reg.weight'].shape[0]} rows for {num_classes} classes)"
        )
    out["roi_heads.box_head.fc6.weight"] = roi["bbox_head.shared_fcs.0.weight"]
    out["roi_heads.box_head.fc6.bias"] = roi["bbox_head.shared_fcs.0.bias"]
    out["roi_heads.box_head.fc7.weight"] = roi["bbox_head.shared_fcs.1.weight"]
    out["roi_heads.box_head.fc7.bias"] = roi["bbox_head.shared_fcs.1.bias"]
    # mmdet: classes 0..K-1 then background; torchvision: background then classes 1..K.
    out["roi_heads.box_predictor.cls_score.weight"] = torch.cat([fc_cls_w[-1:], fc_cls_w[:-1]])
    out["roi_heads.box_predictor.cls_score.bias"] = torch.cat([fc_cls_b[-1:], fc_cls_b[:-1]])
    reg_w, reg_b = roi["bbox_head.fc_reg.weight"], roi["bbox_head.fc_reg.bias"]
    out["roi_heads.box_predictor.bbox_pred.weight"] = torch.cat([reg_w.new_zeros(4, reg_w.shape[1]), reg_w])
    out["roi_heads.box_predictor.bbox_pred.bias"] = torch.cat([reg_b.new_zeros(4), reg_b])
    has_mask = "mask_head.conv_logits.weight" in roi
    if has_mask:
        for i in range(4):
            for leaf in ("weight", "bias"):
                out[f"roi_heads.mask_head.{i}.0.{leaf}"] = roi[f"mask_head.convs.{i}.conv.{leaf}"]
        for leaf in ("weight", "bias"):
            out[f"roi_heads.mask_predictor.conv5_mask.{leaf}"] = roi[f"mask_head.upsample.{leaf}"]
        logits_w, logits_b = roi["mask_head.conv_logits.weight"], roi["mask_head.conv_logits.bias"]
        out["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.cat(
            [logits_w.new_zeros(1, *logits_w.shape[1:]), logits_w]
        )
        out["roi_heads.mask_predictor.mask_fcn_logits.bias"] = torch.cat([logits_b.new_zeros(1), logits_b])
    info = {"backbone": infer_config(backbone), "num_classes": num_classes, "masks": has_mask}
    return out, info


@dataclasses.dataclass(frozen=True)
class MMDetCheckpoint:
    """An mmdet FasterNet Mask R-CNN checkpoint converted to torchvision's keys, and what it holds."""

    state_dict: dict[str, torch.Tensor]
    backbone: dict[str, Any]  # FasterNet arguments, the activation included
    num_classes: int
    masks: bool
    class_names: list[str] | None
    origin: str


def read_mmdet(source: str | os.PathLike | Mapping, *, act_layer: str | None = None) -> MMDetCheckpoint:
    """Read and convert a released mmdet checkpoint (path, URL or its loaded dict).

    The backbone configuration and the class count are read off the shapes; the activation of
    unregistered backbones defaults to ReLU (all released detectors use it).
    """
    if isinstance(source, Mapping):
        obj, origin = source, "<dict>"
    else:
        path = resolve_checkpoint(source)
        obj, _ = read_file(path)
        origin = str(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(f"{origin} is not an mmdet checkpoint (expected {{'meta', 'state_dict'}})")
    state_dict, info = mmdet_to_torchvision(obj["state_dict"])
    backbone = dict(info["backbone"])
    variant = identify_variant(backbone)
    backbone["act_layer"] = act_layer or (get_variant(variant).model_args["act_layer"] if variant else "relu")
    backbone.pop("features_only", None)
    names = None
    meta = obj.get("meta") or {}
    if isinstance(meta, Mapping) and meta.get("CLASSES"):
        names = list(meta["CLASSES"])
    if names is None and info["num_classes"] == len(COCO_CLASSES):
        names = list(COCO_CLASSES)
    return MMDetCheckpoint(state_dict, backbone, info["num_classes"], info["masks"], names, origin)
