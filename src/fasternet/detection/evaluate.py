"""COCO box and mask AP of a detector's predictions, with pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch

from fasternet.detection.data import CocoDetection, encode_rle

__all__ = ["coco_evaluate", "predictions_to_coco"]

_STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _coco_api():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO metrics need pycocotools: pip install 'fasternet[detection]'") from None
    return COCO, COCOeval


def predictions_to_coco(
    dataset: CocoDetection, predictions: dict[int, dict[str, torch.Tensor]], mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """COCO result records: xywh boxes, the json's category ids, RLE masks (binarized)."""
    results = []
    for image_id, prediction in predictions.items():
        boxes = prediction["boxes"].detach().cpu().float()
        scores = prediction["scores"].detach().cpu().float()
        labels = prediction["labels"].detach().cpu()
        masks = prediction.get("masks")
        for i in range(len(boxes)):
            x1, y1, x2, y2 = boxes[i].tolist()
            record = {
                "image_id": int(image_id),
                "category_id": dataset.categories[int(labels[i]) - 1]["id"],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[i]),
            }
            if masks is not None:
                mask = masks[i]
                mask = (mask[0] if mask.ndim == 3 else mask).cpu().numpy()
                record["segmentation"] = encode_rle(mask >= mask_threshold if mask.dtype != np.bool_ else mask)
            results.append(record)
    return results


def coco_evaluate(
    dataset: CocoDetection,
    predictions: dict[int, dict[str, torch.Tensor]],
    iou_types: tuple[str, ...] = ("bbox", "segm"),
) -> dict[str, float]:
    """AP figures (0-1) per IoU type: ``bbox_ap``, ``bbox_ap50``, ..., ``segm_ap``, ... ."""
    COCO, COCOeval = _coco_api()
    ground_truth = copy.deepcopy(dataset.coco)
    for annotation in ground_truth["annotations"]:
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            annotation["segmentation"] = segmentation  # uncompressed RLE: the COCO API converts it
    results = predictions_to_coco(dataset, predictions)
    metrics: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        for iou_type in iou_types:
            has_masks = any(a.get("segmentation") for a in ground_truth["annotations"])
            if iou_type == "segm" and (not has_masks or (results and "segmentation" not in results[0])):
                continue  # a box-only data set, or a box-only detector
            detections = gt.loadRes(results) if results else COCO()
            if not results:
                metrics.update({f"{iou_type}_{name}": 0.0 for name in _STATS})
                continue
            evaluator = COCOeval(gt, detections, iou_type)
            evaluator.params.imgIds = [image["id"] for image in dataset.images]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            for name, value in zip(_STATS, evaluator.stats[: len(_STATS)], strict=True):
                metrics[f"{iou_type}_{name}"] = float(value) if value >= 0 else None  # -1: no such objects
    return metrics
