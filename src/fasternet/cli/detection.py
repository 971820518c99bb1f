"""Detection commands (torchvision is imported only when one of them runs): detect, convert-mmdet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fasternet._utils import require
from fasternet.cli._common import add_command, from_args, positive_int_list
from fasternet.io.images import Unreadable, expand_image_paths, read_image


def cmd_detect(args: argparse.Namespace) -> int | None:
    require("torchvision")  # a clear install hint before fasternet.detection imports it
    import fasternet.detection.data
    import fasternet.detection.training
    import fasternet.detection.visualize

    detection = fasternet.detection
    if args.detect_command == "train":
        config = from_args(args, detection.training.DetectionTrainConfig, lr_steps=args.lr_steps)
        detection.training.train_detector(config)
        return None
    model = detection.load_detector(args.checkpoint)
    if args.detect_command == "eval":
        dataset = detection.data.CocoDetection(
            Path(args.data) / f"{args.split}.json", masks=model.fasternet_config["arch"] == "maskrcnn"
        )
        metrics = detection.training.evaluate_detector(
            model, dataset, device=torch.device("cpu"), progress=not args.json
        )
        summary = "  ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k.endswith(("_ap", "_ap50"))
        )
        print(f"{summary}  on {metrics['images']} images")
        if args.json:
            print(json.dumps(metrics))
        return None
    names = model.class_names or [str(i) for i in range(1, model.fasternet_config["num_classes"] + 1)]
    failed = 0
    for path in expand_image_paths(args.images):
        image = read_image(path)
        if isinstance(image, Unreadable):
            failed += 1
            print(f"fasternet: error: cannot read image {image}", file=sys.stderr)
            continue
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            output = model([x])[0]
        keep = output["scores"] >= args.score_threshold
        detections = [
            {"class": names[int(label) - 1], "score": float(score), "box": [round(float(v), 1) for v in box]}
            for box, score, label in zip(
                output["boxes"][keep], output["scores"][keep], output["labels"][keep], strict=True
            )
        ]
        if args.json:
            print(json.dumps({"image": str(path), "detections": detections}))
        else:
            print(f"{path}: {len(detections)} detections")
            for d in detections[:20]:
                print(f"  {d['score']:.3f}  {d['class']:<16} {d['box']}")
        if args.save_vis:
            masks = output["masks"][keep][:, 0] >= 0.5 if "masks" in output else None
            out = Path(args.save_vis) / (Path(path).stem + "_detections.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            drawing = detection.visualize.draw_detections(
                image, output["boxes"][keep], output["labels"][keep], output["scores"][keep], names, masks
            )
            drawing.save(out)
            print(f"  drew {out}")
    return 1 if failed else 0


def cmd_convert_mmdet(args: argparse.Namespace) -> None:
    require("torchvision")
    from fasternet.detection import load_mmdet, save_detector

    model = load_mmdet(args.checkpoint)
    path = save_detector(model, args.output)
    config = model.fasternet_config
    print(
        f"wrote {path}: {config['arch']}, {config['num_classes']} classes, backbone embed_dim "
        f"{config['backbone']['embed_dim']} depths {config['backbone']['depths']}"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "detect", cmd_detect, "object detection and instance segmentation (needs torchvision)")
    detect = p.add_subparsers(dest="detect_command", required=True, metavar="DETECT_COMMAND")
    d = add_command(detect, "train", cmd_detect, "train a detector on COCO-format data (train.json, val.json)")
    d.add_argument("--data", required=True, help="folder with train.json, val.json and the images")
    d.add_argument("--output", required=True, help="run folder: last.pt, best.safetensors, log.jsonl")
    d.add_argument("--arch", choices=["maskrcnn", "fasterrcnn", "retinanet", "fcos"], default="maskrcnn")
    d.add_argument("--backbone", default="fasternet_s", help="FasterNet variant, or resnet50 (the baseline)")
    d.add_argument("--pretrained-backbone", help="backbone checkpoint (any layout)")
    d.add_argument("--trainable-stages", type=int, default=4, help="backbone stages trained (0-4)")
    d.add_argument("--epochs", type=int, default=12)
    d.add_argument("--batch-size", type=int, default=2, help="images per process")
    d.add_argument("--lr", type=float, help="AdamW learning rate (default: 2e-4 for T0-S, 1e-4 for M and L: official)")
    d.add_argument("--weight-decay", type=float, default=1e-4)
    d.add_argument(
        "--lr-steps", type=positive_int_list, default=(8, 11), help="epochs after which the lr is divided by 10"
    )
    d.add_argument("--warmup-iters", type=int, default=500, help="linear warm-up iterations")
    d.add_argument("--min-size", type=int, default=800, help="short side the images are resized to")
    d.add_argument("--max-size", type=int, default=1333, help="longest side at most")
    d.add_argument("--clip-grad", type=float, help="gradient-norm clipping")
    d.add_argument(
        "--drop-path-rate", type=float, help="backbone stochastic depth (default: official S 0.15, M 0.2, L 0.3)"
    )
    d.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep the backbone's BN statistics fixed (the released models were trained with them updating)",
    )
    d.add_argument("--workers", type=int, default=2, help="data loading processes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--resume", action="store_true", help="continue after the last completed epoch")
    d.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    d = add_command(detect, "eval", cmd_detect, "COCO box (and mask) AP of a detector checkpoint")
    d.add_argument("--checkpoint", required=True, help="detector checkpoint (.safetensors)")
    d.add_argument("--data", required=True, help="folder with SPLIT.json and the images")
    d.add_argument("--split", default="val", help="which json to evaluate on")
    d.add_argument("--json", action="store_true", help="last line: JSON with bbox_ap, bbox_ap50, segm_ap, ...")
    d = add_command(detect, "predict", cmd_detect, "detections on image files (a folder: the images in it), drawn")
    d.add_argument("--checkpoint", required=True, help="detector checkpoint (.safetensors)")
    d.add_argument("--score-threshold", type=float, default=0.5, help="lowest score shown")
    d.add_argument("--save-vis", help="folder to write the images with boxes, masks and labels into")
    d.add_argument("--json", action="store_true", help="one JSON line per image")
    d.add_argument("images", nargs="+", help="image files or folders")

    p = add_command(sub, "convert-mmdet", cmd_convert_mmdet, "convert a released mmdet FasterNet Mask R-CNN checkpoint")
    p.add_argument("checkpoint", help="mmdet checkpoint (.pth) path or URL")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
