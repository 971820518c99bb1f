"""Detectors: each architecture trains, COCO AP is right, the CLI works end to end, DDP and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fasternet.detection import create_detector, load_detector, load_mmdet, save_detector
from fasternet.detection.data import CocoDetection, collate_detection, prepare_nuclei, prepare_trees
from fasternet.detection.evaluate import coco_evaluate
from fasternet.detection.models import paste_masks
from fasternet.io.checkpoints import CheckpointError
from paths import SHARED

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
TINY = {"embed_dim": 16, "depths": [1, 1, 1, 1], "act_layer": "relu"}


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    return prepare_nuclei(tmp_path_factory.mktemp("nuclei"), source=SHARED / "data" / "nuclei")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    return prepare_trees(tmp_path_factory.mktemp("trees"), source=SHARED / "data" / "trees")


def small_set(root: Path, out: Path, images: int) -> Path:
    """The first images of a prepared set as its own train/val (fast tests)."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        data = json.loads((root / f"{split}.json").read_text())
        keep = {image["id"] for image in data["images"][:images]}
        data["images"] = [image for image in data["images"] if image["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        for image in data["images"]:
            image["file_name"] = str(root / image["file_name"])
        (out / f"{split}.json").write_text(json.dumps(data))
    return out


def test_prepared_sets_are_complete(nuclei, trees):
    tree_boxes = sum(len(json.loads((trees / f"{s}.json").read_text())["annotations"]) for s in ("train", "val"))
    assert tree_boxes == 377  # every box of the three images, none duplicated by tiling
    val = CocoDetection(nuclei / "val.json")
    image, target = val[0]
    assert image.shape[0] == 3 and target["masks"].shape[1:] == image.shape[1:]
    assert set(val.class_names) == {"nucleus"}


@pytest.mark.parametrize("arch", ["maskrcnn", "fasterrcnn", "retinanet", "fcos"])
def test_each_architecture_trains_and_its_loss_falls(arch, nuclei):
    torch.manual_seed(0)
    dataset = CocoDetection(nuclei / "train.json", masks=arch == "maskrcnn")
    images, targets, _ = collate_detection([dataset[0], dataset[1]])
    model = create_detector(arch, backbone=TINY, num_classes=1, min_size=128, max_size=128).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        output = model([images[0]])[0]
    assert output["boxes"].shape[1] == 4 and ("masks" in output) == (arch == "maskrcnn")


def test_ground_truth_as_predictions_gives_ap_1(nuclei, trees):
    for root, masks in ((nuclei, True), (trees, False)):
        dataset = CocoDetection(root / "val.json", masks=masks)
        predictions = {}
        for i in range(len(dataset)):
            target = dataset.target(i)
            prediction = {
                "boxes": target["boxes"],
                "scores": torch.ones(len(target["boxes"])),
                "labels": target["labels"],
            }
            if masks:
                prediction["masks"] = target["masks"][:, None].float()
            predictions[int(target["image_id"])] = prediction
        metrics = coco_evaluate(dataset, predictions)
        assert metrics["bbox_ap"] == pytest.approx(1.0)
        if masks:
            assert metrics["segm_ap"] == pytest.approx(1.0)
    assert coco_evaluate(dataset, {})["bbox_ap"] == 0.0


def test_mask_pasting_fills_the_box():
    masks = torch.ones(1, 1, 28, 28)
    pasted = paste_masks(masks, torch.tensor([[10.0, 20.0, 50.0, 40.0]]), (64, 80))[0, 0] >= 0.5
    assert pasted[25, 30] and not pasted[5, 5] and not pasted[45, 60]
    assert pasted.sum() == pytest.approx(40 * 20, rel=0.1)


def test_save_and_load_detector_give_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = create_detector(
        "maskrcnn", backbone=TINY, num_classes=3, min_size=96, max_size=96, box_score_thresh=0.0
    ).eval()
    path = save_detector(model, tmp_path / "det.safetensors", class_names=["a", "b", "c"])
    loaded = load_detector(path)
    x = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert loaded.class_names == ["a", "b", "c"]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    with pytest.raises(CheckpointError, match="not a fasternet detector"):
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        load_detector(tmp_path / "plain.safetensors")


def test_create_detector_errors():
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo", backbone=TINY, num_classes=1)
    with pytest.raises(ValueError, match="num_classes"):
        create_detector("maskrcnn", backbone=TINY, num_classes=0)
    with pytest.raises(ValueError, match="official COCO Mask R-CNN"):
        create_detector("fasterrcnn", backbone="fasternet_s", num_classes=80, pretrained=True)
    with pytest.raises(CheckpointError, match="http://127.0.0.1:9/mask_rcnn.pth"):
        create_detector(
            "maskrcnn", backbone="fasternet_s", num_classes=80, pretrained="http://127.0.0.1:9/mask_rcnn.pth"
        )


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", *args], capture_output=True, text=True, timeout=900, env=ENV
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


QUICK = [
    "--arch",
    "fasterrcnn",
    "--backbone",
    "fasternet_t0",
    "--min-size",
    "128",
    "--max-size",
    "128",
    "--warmup-iters",
    "2",
    "--lr",
    "1e-3",
    "--workers",
    "0",
    "--no-progress",
    "--batch-size",
    "2",
]


def test_cli_prepare_train_eval_predict(trees, tmp_path):
    out = cli("prepare", "trees", str(tmp_path / "trees"), "--source", str(SHARED / "data" / "trees")).stdout
    assert "train.json" in out
    data = small_set(tmp_path / "trees", tmp_path / "small", images=4)
    run = tmp_path / "run"
    cli("detect", "train", *QUICK, "--data", str(data), "--output", str(run), "--epochs", "2")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and {"train_loss", "bbox_ap", "images_per_s"} <= log[0].keys()
    metrics = json.loads(
        cli("detect", "eval", "--checkpoint", str(run / "best.safetensors"), "--data", str(data), "--json")
        .stdout.strip()
        .splitlines()[-1]
    )
    assert {"bbox_ap", "bbox_ap50", "images"} <= metrics.keys() and metrics["images"] == 4
    image = SHARED / "data" / "trees" / "OSBS_029.png"
    lines = (
        cli(
            "detect",
            "predict",
            "--checkpoint",
            str(run / "best.safetensors"),
            str(image),
            "--score-threshold",
            "0",
            "--save-vis",
            str(tmp_path / "vis"),
            "--json",
        )
        .stdout.strip()
        .splitlines()
    )
    assert json.loads(lines[0])["image"] == str(image)
    assert (tmp_path / "vis" / "OSBS_029_detections.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(tmp_path):
    result = cli("detect", "train", *QUICK, "--data", str(tmp_path), "--output", str(tmp_path / "o"), check=False)
    assert result.returncode == 1 and "train.json" in result.stderr and "Traceback" not in result.stderr
    result = cli("convert-mmdet", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x.safetensors"), check=False)
    assert result.returncode == 1 and "not found" in result.stderr
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    result = cli("convert-mmdet", str(tmp_path / "other.pth"), "-o", str(tmp_path / "x.safetensors"), check=False)
    assert result.returncode == 1 and "not an mmdet Mask R-CNN" in result.stderr
    result = cli("prepare", "trees", str(tmp_path / "t"), check=False)
    assert result.returncode == 1 and "pip download deepforest==2.1.0" in result.stderr


def test_convert_mmdet_cli_gives_the_same_model(tmp_path):
    from paths import REFERENCE

    reference = torch.load(REFERENCE / "mmdet_maskrcnn_ref.pt", weights_only=True)
    torch.save(reference["checkpoint"], tmp_path / "mask_rcnn.pth")
    cli("convert-mmdet", str(tmp_path / "mask_rcnn.pth"), "-o", str(tmp_path / "converted.safetensors"))
    loaded = load_detector(tmp_path / "converted.safetensors")
    direct = load_mmdet(reference["checkpoint"])
    x = [torch.rand(3, 200, 240)]
    with torch.no_grad():
        a, b = direct(x)[0], loaded(x)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert loaded.rpn._post_nms_top_n["testing"] == 1000 and loaded.roi_heads.score_thresh == 0.05


def test_killed_and_resumed_detection_run_matches(trees, tmp_path):
    data = small_set(trees, tmp_path / "small", images=4)
    args = [*QUICK, "--data", str(data), "--epochs", "3"]
    cli("detect", "train", *args, "--output", str(tmp_path / "straight"))
    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "fasternet", "detect", "train", *args, "--output", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 600
    while process.poll() is None and not (
        (run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") >= 1
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] < 3
    cli("detect", "train", *args, "--output", str(run), "--resume")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_with_two_processes(trees, tmp_path):
    data = small_set(trees, tmp_path / "small", images=4)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fasternet",
        "detect",
        "train",
        *QUICK,
        "--batch-size",
        "1",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "ddp"),
        "--epochs",
        "1",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-3000:]
    record = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 0 and record["bbox_ap"] is not None


def test_detection_defaults_are_those_the_released_checkpoints_were_trained_with():
    from fasternet.detection.training import DetectionTrainConfig

    # The official values: lr of mask_rcnn_fasternet_{s,m,l}_fpn_1x_coco.py (AdamW), drop_path_rate of
    # detection/backbones/fasternet.py; T0-T2 have no official detection config.
    official = {"fasternet_s": (2e-4, 0.15), "fasternet_m": (1e-4, 0.2), "fasternet_l": (1e-4, 0.3)}
    imagenet = {"fasternet_t0": 0.0, "fasternet_t1": 0.02, "fasternet_t2": 0.05}
    for name, (lr, drop_path) in official.items():
        config = DetectionTrainConfig(data="d", output="o", backbone=name)
        assert (config.lr, config.drop_path_rate, config.freeze_bn) == (lr, drop_path, False), name
    for name, drop_path in imagenet.items():
        config = DetectionTrainConfig(data="d", output="o", backbone=name)
        assert (config.lr, config.drop_path_rate) == (2e-4, drop_path), name
    assert DetectionTrainConfig(data="d", output="o", lr=5e-5).lr == 5e-5  # a given value wins


def test_backbone_bn_statistics_update_unless_frozen():
    updating = create_detector("fasterrcnn", backbone=TINY, num_classes=2, backbone_drop_path_rate=0.15).train()
    assert updating.backbone.body.config["drop_path_rate"] == 0.15
    norms = [m for m in updating.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    frozen = create_detector("fasterrcnn", backbone=TINY, num_classes=2, norm_eval=True).train()
    assert all(not m.training for m in frozen.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d))
