"""FasterNet detectors on torchvision: Mask R-CNN, Faster R-CNN, RetinaNet and FCOS.

The backbone is the ``features_only`` FasterNet with its four output norms (what the official
Mask R-CNN checkpoints hold), under torchvision's FPN and heads. The R-CNNs use the components
of mmdet's Mask R-CNN where torchvision's differ, so that the released checkpoints reproduce
mmdet and models trained here behave the same way:

* anchors at fixed strides (4..64) and unrounded base sizes (torchvision rounds them and derives
  strides from image size / grid size);
* RoIAlign with ``aligned=True`` and adaptive sampling (``sampling_ratio=0``), levels chosen by
  ``floor(log2(sqrt(area) / 56))`` (torchvision: ``aligned=False``, ``sampling_ratio=2``);
* masks pasted into the image by bilinear sampling at pixel centres, as mmdet does
  (torchvision's ``paste_masks_in_image`` differs by up to 0.4 mask IoU on small boxes).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from fasternet.builder import create_model
from fasternet.detection.mmdet import MMDET_TEST_SETTINGS, read_mmdet
from fasternet.io.checkpoints import CheckpointError
from fasternet.models import FasterNet, get_weights, list_weights

__all__ = [
    "ARCHITECTURES",
    "FasterNetFPN",
    "MMDetAnchorGenerator",
    "MMDetRoIAlign",
    "MMDetTransform",
    "create_detector",
    "load_mmdet",
    "paste_masks",
]

ARCHITECTURES = ("maskrcnn", "fasterrcnn", "retinanet", "fcos")


class FasterNetFPN(nn.Module):
    """A features_only FasterNet (output norms included) under torchvision's FPN."""

    def __init__(
        self,
        body: FasterNet,
        *,
        stages: tuple[int, ...],
        extra: str,
        out_channels: int = 256,
        trainable_stages: int = 4,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if not body.features_only:
            raise ValueError("the detection backbone must be built with features_only=True")
        if not 0 <= trainable_stages <= len(body.stages):
            raise ValueError(f"trainable_stages must be in 0..{len(body.stages)}, got {trainable_stages}")
        self.body = body
        self.stages = stages
        self.norm_eval = norm_eval
        channels = [body.feature_info[i]["num_chs"] for i in stages]
        extra_block = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(channels[-1], out_channels)
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        frozen = len(body.stages) - trainable_stages
        if frozen > 0:
            for module in (body.patch_embed, *body.stages[:frozen]):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> FasterNetFPN:
        super().train(mode)
        if mode and self.norm_eval:  # keep pretrained BN statistics while fine-tuning with small batches
            for module in self.body.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body.forward_intermediates(x, norm=True)
        return self.fpn(OrderedDict((str(i), features[s]) for i, s in enumerate(self.stages)))


class MMDetAnchorGenerator(AnchorGenerator):
    """Anchors as mmdet's AnchorGenerator makes them: fixed strides, unrounded base anchors.

    An AnchorGenerator (torchvision checks the type) whose anchors are computed mmdet's way.
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (4, 8, 16, 32, 64),
        scales: tuple[float, ...] = (8.0,),
        ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__(
            tuple(tuple(stride * s for s in scales) for stride in strides), (tuple(ratios),) * len(strides)
        )
        self.strides = tuple(strides)
        self.scales = tuple(scales)
        self.ratios = tuple(ratios)

    def num_anchors_per_location(self) -> list[int]:
        return [len(self.scales) * len(self.ratios)] * len(self.strides)

    def base_anchors(self, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        ratios = torch.tensor(self.ratios, dtype=dtype, device=device)
        scales = torch.tensor(self.scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        levels = []
        for feature, stride in zip(feature_maps, self.strides, strict=True):
            height, width = feature.shape[-2:]
            shift_x = torch.arange(width, dtype=dtype, device=device) * stride
            shift_y = torch.arange(height, dtype=dtype, device=device) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
            levels.append((shifts[:, None, :] + self.base_anchors(stride, dtype, device)[None]).reshape(-1, 4))
        anchors = torch.cat(levels)
        return [anchors for _ in range(len(image_list.image_sizes))]


class MMDetRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over FPN levels as mmdet's SingleRoIExtractor: aligned, adaptive sampling.

    A MultiScaleRoIAlign (torchvision checks the type) with mmdet's level rule and fixed strides.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        *,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: int = 56,
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.strides = tuple(strides)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        return torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        levels = self.levels(rois)
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.where(levels == level)[0]
            if index.numel():
                result[index] = roi_align(
                    feature,
                    rois[index],
                    self.output_size,
                    spatial_scale=1.0 / stride,
                    sampling_ratio=self.sampling_ratio,
                    aligned=self.aligned,
                ).to(result.dtype)
        return result


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Mask probabilities [N, 1, m, m] pasted into [N, 1, H, W] by bilinear sampling at pixel centres."""
    height, width = image_size
    if masks.shape[0] == 0:
        return masks.new_zeros((0, 1, height, width))
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    img_y = (torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    grid = torch.stack([img_x[:, None, :].expand(-1, height, -1), img_y[:, :, None].expand(-1, -1, width)], dim=3)
    return F.grid_sample(masks.float(), grid, align_corners=False)


class MMDetTransform(GeneralizedRCNNTransform):
    """torchvision's resize/normalize/batch, with mmdet's mask pasting after detection."""

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for prediction, image_size, original in zip(result, image_shapes, original_image_sizes, strict=True):
            ratio_h = original[0] / image_size[0]
            ratio_w = original[1] / image_size[1]
            boxes = prediction["boxes"] * torch.tensor(
                [ratio_w, ratio_h, ratio_w, ratio_h], device=prediction["boxes"].device
            )
            prediction["boxes"] = boxes
            if "masks" in prediction:
                prediction["masks"] = paste_masks(prediction["masks"], boxes, tuple(original))
            if "keypoints" in prediction:
                raise NotImplementedError("keypoints are not supported")
        return result


class ResNetFPN(nn.Module):
    """torchvision's ResNet-50 under the same FPN: the baseline of the paper's Table 4.

    Trainable BatchNorm (torchvision freezes it for ImageNet-pretrained weights, which cannot be
    downloaded here; frozen BN on a randomly initialized network does not normalize anything).
    """

    def __init__(self, extra: str, trainable_stages: int) -> None:
        super().__init__()
        returned = [1, 2, 3, 4] if extra == "maxpool" else [2, 3, 4]
        blocks = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(2048, 256)
        self.inner = resnet_fpn_backbone(
            backbone_name="resnet50",
            weights=None,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=min(5, trainable_stages + 1),
            returned_layers=returned,
            extra_blocks=blocks,
        )
        self.out_channels = self.inner.out_channels
        self.norm_eval = False

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.inner(x)


def _backbone(
    backbone: str | Mapping[str, Any],
    pretrained_backbone: bool | str | os.PathLike,
    stages: tuple[int, ...],
    extra: str,
    trainable_stages: int,
    norm_eval: bool,
    drop_path_rate: float | None,
) -> FasterNetFPN | ResNetFPN:
    if backbone == "resnet50":
        if pretrained_backbone:
            raise ValueError("the ResNet-50 baseline is built from scratch here (no downloads)")
        return ResNetFPN(extra, trainable_stages)
    if pretrained_backbone is True and not isinstance(backbone, str):
        raise ValueError("pretrained_backbone=True needs a variant name; pass a checkpoint path instead")
    config = {**backbone, "num_classes": 0} if isinstance(backbone, Mapping) else backbone
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    body = create_model(config, features_only=True, pretrained=pretrained_backbone or False, **overrides)
    return FasterNetFPN(body, stages=stages, extra=extra, trainable_stages=trainable_stages, norm_eval=norm_eval)


def create_detector(
    arch: str = "maskrcnn",
    *,
    backbone: str | dict = "fasternet_s",
    num_classes: int,
    pretrained: bool | str = False,
    pretrained_backbone: bool | str = False,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_stages: int = 4,
    norm_eval: bool = False,
    backbone_drop_path_rate: float | None = None,
    **torchvision_kwargs: Any,
) -> nn.Module:
    """A FasterNet detector on torchvision's detection models.

    ``pretrained`` is True (the official COCO Mask R-CNN of the backbone, downloaded and cached
    like the classification weights) or an mmdet checkpoint path/URL. ``num_classes`` counts
    object classes (the background class torchvision adds is not counted). ``backbone`` is a
    variant name or a FasterNet configuration dict; ``pretrained_backbone`` is True (the
    variant's ImageNet release) or a checkpoint in any layout :func:`fasternet.load_checkpoint`
    reads. ``trainable_stages`` (0-4) freezes the stem and the first stages; ``norm_eval`` keeps
    the backbone's BN statistics fixed while training (default False: the released detectors were
    trained with them updating, the official ``norm_eval=True`` being swallowed by the backbone's
    ``**kwargs``); ``backbone_drop_path_rate`` replaces the variant's drop path rate. Other
    keywords go to torchvision's constructor (e.g. ``box_detections_per_img``).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if pretrained:
        if pretrained is True:
            released = {w.split(".")[0]: w for w in list_weights("detection")}
            if arch != "maskrcnn" or backbone not in released or num_classes != 80:
                raise ValueError(
                    "pretrained=True is the official COCO Mask R-CNN: arch='maskrcnn', backbone one of "
                    f"{', '.join(released)}, num_classes=80; for other tasks start from "
                    "pretrained_backbone=True"
                )
            pretrained = get_weights(released[backbone]).url
        return load_mmdet(pretrained, min_size=min_size, max_size=max_size, **torchvision_kwargs)
    if num_classes < 1:
        raise ValueError(f"num_classes counts object classes and must be >= 1, got {num_classes}")
    common = dict(min_size=min_size, max_size=max_size, **torchvision_kwargs)
    if arch in ("maskrcnn", "fasterrcnn"):
        body = _backbone(
            backbone, pretrained_backbone, (0, 1, 2, 3), "maxpool", trainable_stages, norm_eval, backbone_drop_path_rate
        )
        names = ["0", "1", "2", "3"]
        cls = MaskRCNN if arch == "maskrcnn" else FasterRCNN
        extra = {"mask_roi_pool": MMDetRoIAlign(names, 14)} if arch == "maskrcnn" else {}
        model = cls(
            body,
            num_classes=num_classes + 1,
            rpn_anchor_generator=MMDetAnchorGenerator(),
            box_roi_pool=MMDetRoIAlign(names, 7),
            **extra,
            **common,
        )
    else:
        body = _backbone(
            backbone, pretrained_backbone, (1, 2, 3), "p6p7", trainable_stages, norm_eval, backbone_drop_path_rate
        )
        if arch == "retinanet":
            sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
            anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
            model = RetinaNet(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
        else:
            anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
            model = FCOS(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    base = model.transform
    model.transform = MMDetTransform(
        min_size,
        max_size,
        base.image_mean,
        base.image_std,
        size_divisible=base.size_divisible,
        fixed_size=base.fixed_size,
        _skip_resize=base._skip_resize,
    )
    model.fasternet_config = {
        "arch": arch,
        "backbone": dict(body.body.config) if isinstance(body, FasterNetFPN) else backbone,
        "num_classes": num_classes,
        "min_size": min_size,
        "max_size": max_size,
        "trainable_stages": trainable_stages,
        "norm_eval": body.norm_eval,
        "torchvision_kwargs": dict(torchvision_kwargs),
    }
    return model


def load_mmdet(
    source: str | os.PathLike | Mapping,
    *,
    act_layer: str | None = None,
    class_names: list[str] | None = None,
    mmdet_test_settings: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision Mask R-CNN that gives the detections mmdet gives with this checkpoint.

    ``source`` is a released mmdet checkpoint (path, URL or its loaded dict), converted by
    :func:`fasternet.detection.mmdet.read_mmdet`. ``kwargs`` go to :func:`create_detector`
    (e.g. ``min_size``, ``image_mean``).
    """
    converted = read_mmdet(source, act_layer=act_layer)
    settings = {**(MMDET_TEST_SETTINGS if mmdet_test_settings else {}), **kwargs}
    model = create_detector(
        "maskrcnn" if converted.masks else "fasterrcnn",
        backbone=converted.backbone,
        num_classes=converted.num_classes,
        **settings,
    )
    expected = model.state_dict()
    for key, value in converted.state_dict.items():
        if key not in expected:
            raise CheckpointError(f"{converted.origin}: unexpected converted key {key}")
        if expected[key].shape != value.shape:
            raise CheckpointError(
                f"{converted.origin}: {key} has shape {list(value.shape)}, the model {list(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in converted.state_dict and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{converted.origin}: the converted checkpoint lacks {', '.join(missing[:5])}")
    model.load_state_dict(converted.state_dict, strict=False)
    names = class_names or converted.class_names
    model.class_names = names or [f"class_{i}" for i in range(1, converted.num_classes + 1)]
    return model.eval()
