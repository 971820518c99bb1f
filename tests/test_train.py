"""Training, resuming, crash safety, evaluation and prediction, run as a user runs them."""

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
from safetensors.torch import load_file

import fasternet
from conftest import SHARED
from fasternet.io.images import ImageFolder, load_image
from fasternet.training.data import typical_image_side
from fasternet.training.recipes import resolve_crops
from fasternet.training.run import lr_at_epoch
from imagetools import make_dataset, make_folder, write_awkward_images

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
QUICK = [
    "--model",
    "fasternet_t0",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.002",
    "--no-progress",
    "--amp",
    "off",
]


def fasternet_cli(*args: str, check: bool = True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", *args], capture_output=True, text=True, timeout=600, env=env or ENV
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fasternet", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), classes=3, train=8, val=4)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recipes_match_the_paper(paper):
    table = paper["training_recipe"]
    columns = table["columns"]
    common = table["common"]
    for name, recipe in fasternet.RECIPES.items():
        row = dict(zip(columns, table[name], strict=True))
        assert recipe.batch_size == row["global_batch"]
        assert recipe.peak_lr == row["lr"] == 0.001 * row["global_batch"] / 1024
        assert recipe.weight_decay == row["weight_decay"]
        assert recipe.clip_grad == row["clip_grad_norm"]
        assert (
            recipe.drop_path_rate == row["drop_path_rate"] == fasternet.get_variant(name).model_args["drop_path_rate"]
        )
        assert recipe.randaugment == row["randaugment"]
        assert recipe.mixup == row["mixup_alpha"]
        assert fasternet.get_variant(name).model_args["act_layer"] == row["activation"].lower()
        assert (recipe.epochs, recipe.warmup_epochs) == (common["epochs"], common["warmup_epochs"])
        assert (recipe.warmup_lr, recipe.min_lr) == (common["warmup_lr"], common["min_lr"])
        assert recipe.label_smoothing == common["label_smoothing"]
        assert (recipe.cutmix, recipe.mixup_switch_prob) == (common["cutmix_alpha"], common["mixup_switch_prob"])
        assert (recipe.early_image_size, recipe.image_size, recipe.late_epochs) == (192, 224, 20)
        imagenet = resolve_crops(recipe, image_side=375)  # ImageNet's photos: about 500 x 375
        assert imagenet.crop_pct == pytest.approx(224 / 248, abs=0.01) and imagenet.crop_scale == 0.08


def test_automatic_crops_show_small_images_whole(tmp_path):
    recipe = fasternet.recipe_for("fasternet_t0", image_size=32)
    assert (recipe.crop_scale, recipe.crop_pct) == (None, None)  # decided by the data
    small = resolve_crops(recipe, image_side=28)
    assert (small.crop_scale, small.crop_pct) == (1.0, 1.0)
    given = resolve_crops(fasternet.recipe_for("fasternet_t0", image_size=32, crop_scale=0.5), image_side=28)
    assert (given.crop_scale, given.crop_pct) == (0.5, 1.0)  # a given value wins
    folder = make_folder(tmp_path, classes=2, per_class=5, size=(40, 36))
    assert typical_image_side(ImageFolder(folder)) == 36


def test_resolved_recipe_and_lr_schedule():
    s = fasternet.recipe_for("fasternet_m")
    assert s.batch_size == 2048 and s.peak_lr == 0.002 and s.clip_grad == 1.0 and s.lr_rule == "0.001 x 2048 / 1024"
    assert s.randaugment == "rand-m7-mstd0.5-inc1" and s.early_image_size == 192
    assert lr_at_epoch(0, s) == pytest.approx(1e-6)
    assert lr_at_epoch(19, s) == lr_at_epoch(20, s) == pytest.approx(0.002)  # the official scheduler peaks at 19
    assert lr_at_epoch(160, s) == pytest.approx(1e-5 + 0.5 * (0.002 - 1e-5))
    assert lr_at_epoch(300, s) == pytest.approx(1e-5)
    small = fasternet.recipe_for("fasternet_t0", batch_size=256, randaugment="none", clip_grad=0, image_size=64)
    assert small.peak_lr == pytest.approx(0.00025) and small.randaugment is None and small.clip_grad is None
    assert small.early_image_size == 64  # no progressive resolution away from the recipe's own size
    with pytest.raises(TypeError, match="unknown recipe setting"):
        fasternet.recipe_for("fasternet_t0", learning_rate=1)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fasternet.recipe_for("fasternet_t0", epochs=0)


def test_training_lowers_the_loss_and_writes_three_files(dataset, tmp_path):
    out = tmp_path / "run"
    fasternet_cli(
        "train",
        *QUICK,
        "--data",
        str(dataset),
        "--output",
        str(out),
        "--epochs",
        "4",
        "--workers",
        "1",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--amp",
        "bf16",
    )
    log = read_log(out / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    for record in log:
        assert {"epoch", "train_loss", "val_top1", "val_top5", "lr", "images_per_s", "seconds"} <= record.keys()
    # 24 images, batch 8: the loss moves a lot from step to step, but the model learns
    assert min(r["train_loss"] for r in log[1:]) < log[0]["train_loss"] and log[-1]["val_top1"] >= log[0]["val_top1"]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and {"optimizer", "scheduler", "scaler", "rng", "settings"} <= state.keys()
    model = fasternet.create_model_from_checkpoint(out / "best.safetensors")
    assert model.class_names == ["class_0", "class_1", "class_2"] and model.num_classes == 3
    best = max(r["val_top1"] for r in log)
    assert fasternet.read_checkpoint(out / "best.safetensors").metadata["val_top1"] == f"{best:.4f}"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path):
    args = [*QUICK, "--data", str(dataset), "--epochs", "4", "--workers", "0", "--ema", "0.9"]
    fasternet_cli("train", *args, "--output", str(tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    process = start("train", *args, "--output", str(interrupted))
    log = interrupted / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().count("\n") >= 1) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = torch.load(interrupted / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4, "the kill must land before the end of training"
    fasternet_cli("train", *args, "--output", str(interrupted), "--resume")

    a, b = weights(tmp_path / "straight" / "last.pt"), weights(interrupted / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["ema"]
    ema_b = torch.load(interrupted / "last.pt", weights_only=True)["ema"]
    assert ema_a["updates"] == ema_b["updates"] == 4 * 3  # 4 epochs of 3 steps
    assert all(torch.equal(ema_a["module"][k], ema_b["module"][k]) for k in ema_a["module"])
    assert not all(torch.equal(ema_a["module"][k], a[k]) for k in a)  # the average is not the weights
    log = read_log(interrupted / "log.jsonl")
    assert all("val_top1_ema" in r for r in log) and (interrupted / "best_ema.safetensors").exists()
    best_a, best_b = load_file(tmp_path / "straight" / "best.safetensors"), load_file(interrupted / "best.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert [r["epoch"] for r in read_log(interrupted / "log.jsonl")] == [0, 1, 2, 3]


def test_resume_refuses_other_settings(dataset, tmp_path):
    out = tmp_path / "run"
    fasternet_cli("train", *QUICK, "--data", str(dataset), "--output", str(out), "--epochs", "1", "--workers", "0")
    result = fasternet_cli(
        "train",
        *QUICK,
        "--data",
        str(dataset),
        "--output",
        str(out),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--resume",
        "--lr",
        "0.1",
        check=False,
    )
    assert result.returncode == 1 and "lr" in result.stderr and "Traceback" not in result.stderr


def test_kill_during_a_checkpoint_write_leaves_a_loadable_last_pt(dataset, tmp_path):
    out = tmp_path / "run"
    process = start("train", *QUICK, "--data", str(dataset), "--output", str(out), "--epochs", "200", "--workers", "0")
    caught = False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "last.pt").exists() and any(p.name.startswith(".last.pt.") for p in out.iterdir()):
                process.send_signal(signal.SIGKILL)
                caught = True
                break
    finally:
        process.kill()
        process.wait()
    assert caught, "never saw a checkpoint being written"
    leftovers = [p for p in out.iterdir() if p.name.startswith(".last.pt.")]
    assert leftovers, "the kill should have interrupted a write"
    state = torch.load(out / "last.pt", weights_only=True)  # the previous complete checkpoint
    assert state["epoch"] >= 1
    fasternet.create_model_from_checkpoint(out / "best.safetensors")


def test_bad_images_are_skipped_and_reported(tmp_path):
    data = make_dataset(tmp_path / "data", classes=2, train=8, val=2)
    write_awkward_images(data / "train" / "class_0")
    write_awkward_images(data / "val" / "class_1")
    out = tmp_path / "run"
    result = fasternet_cli(
        "train", *QUICK, "--data", str(data), "--output", str(out), "--epochs", "1", "--workers", "1"
    )
    assert "unreadable" in result.stderr
    record = read_log(out / "log.jsonl")[0]
    assert record["skipped_images"] >= 2 + 2  # two broken files in train and in val
    evaluation = fasternet_cli(
        "eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(data / "val"), "--json"
    )
    result = json.loads(evaluation.stdout.strip().splitlines()[-1])
    assert result["images"] == 2 * 2 + 6 and result["skipped"] == 2


def _constant_model(tmp_path: Path, predicted: int, class_names: list[str]) -> Path:
    """A checkpoint that always answers ``predicted``: its classifier is a bias."""
    model = fasternet.create_model("fasternet_t0", num_classes=len(class_names))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(len(class_names), 0, -1, dtype=torch.float32).roll(predicted))
    return fasternet.save_checkpoint(
        model,
        tmp_path / "constant.safetensors",
        class_names=class_names,
        metadata={"image_size": "32", "crop_pct": "1.0"},
    )


def test_eval_numbers_on_a_checkpoint_whose_answers_are_known(tmp_path):
    data = make_folder(tmp_path / "val", classes=3, per_class=4)
    names = ["class_2", "class_0", "class_1"]  # the model's order differs from the folders'
    path = _constant_model(tmp_path, predicted=1, class_names=names)  # always "class_0"
    result = fasternet_cli("eval", "--checkpoint", str(path), "--data", str(data), "--json")
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert {k: numbers[k] for k in ("top1", "top5", "images", "skipped")} == {
        "top1": pytest.approx(100 / 3),
        "top5": 100.0,
        "images": 12,
        "skipped": 0,
    }
    assert "top-1 33.333%" in result.stdout


def test_eval_matches_an_independent_computation(dataset, tmp_path):
    out = tmp_path / "run"
    fasternet_cli("train", *QUICK, "--data", str(dataset), "--output", str(out), "--epochs", "2", "--workers", "0")
    numbers = json.loads(
        fasternet_cli("eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(dataset), "--json")
        .stdout.strip()
        .splitlines()[-1]
    )
    model = fasternet.create_model_from_checkpoint(out / "best.safetensors").eval()
    transform = fasternet.EvalTransform(32, 0.9)
    correct = total = 0
    for c, name in enumerate(model.class_names):
        for file in sorted((dataset / "val" / name).iterdir()):
            with torch.no_grad():
                logits = model(transform(load_image(file)).unsqueeze(0))
            correct += int(logits.argmax() == c)
            total += 1
    assert numbers["images"] == total
    assert numbers["top1"] == pytest.approx(100 * correct / total)


def test_predict_on_a_real_image(tmp_path):
    path = _constant_model(tmp_path, predicted=2, class_names=["cat", "dog", "tree"])
    image = SHARED / "data" / "trees" / "OSBS_029.png"
    result = fasternet_cli("predict", "--checkpoint", str(path), str(image), "--top-k", "3")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == str(image)
    assert lines[1].split()[-1] == "tree" and len(lines) == 4
    as_json = json.loads(fasternet_cli("predict", "--checkpoint", str(path), str(image), "--json").stdout)
    assert as_json["top"][0]["class"] == "tree"
    assert sum(t["probability"] for t in as_json["top"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_on_an_unreadable_image_is_one_line(tmp_path):
    path = _constant_model(tmp_path, predicted=0, class_names=["a", "b"])
    (tmp_path / "broken.jpg").write_text("nope")
    result = fasternet_cli("predict", "--checkpoint", str(path), str(tmp_path / "broken.jpg"), check=False)
    assert result.returncode == 1 and result.stderr.startswith("fasternet: error: cannot read image")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_predict_answers_every_readable_image_and_names_each_broken_one(tmp_path):
    path = _constant_model(tmp_path, predicted=1, class_names=["a", "b"])
    readable = write_awkward_images(tmp_path / "messy")
    (tmp_path / "empty.png").write_bytes(b"")
    good = SHARED / "data" / "trees" / "OSBS_029.png"
    result = fasternet_cli(
        "predict", "--checkpoint", str(path), str(good), str(tmp_path / "empty.png"), str(tmp_path / "messy"),
        "--top-k", "1", check=False,
    )  # fmt: skip
    assert result.returncode == 1  # some inputs failed
    answered = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    expected_good = [str(good)] + sorted(str(tmp_path / "messy" / n) for n, ok in readable.items() if ok)
    assert sorted(answered) == sorted(expected_good)
    errors = result.stderr.strip().splitlines()
    broken = [str(tmp_path / "empty.png")] + [str(tmp_path / "messy" / n) for n, ok in readable.items() if not ok]
    assert len(errors) == len(broken) and all(e.startswith("fasternet: error: cannot read image") for e in errors)
    assert all(any(b in e for e in errors) for b in broken)
    lines = fasternet_cli("predict", "--checkpoint", str(path), str(tmp_path / "messy"), "--json", check=False)
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(records) == len(readable) and sum("error" in r for r in records) == 2
    assert all(r["top"][0]["class"] == "b" for r in records if "top" in r)


def test_eval_names_each_unreadable_file_once(tmp_path):
    data = make_folder(tmp_path / "val", classes=2, per_class=3)
    write_awkward_images(data / "class_0")
    path = _constant_model(tmp_path, predicted=0, class_names=["class_0", "class_1"])
    result = fasternet_cli("eval", "--checkpoint", str(path), "--data", str(data), "--workers", "1")
    named = [line for line in result.stderr.splitlines() if line.startswith("skipped unreadable image")]
    assert sorted(line.split()[3].rstrip(":") for line in named) == sorted(
        str(data / "class_0" / n) for n in ("not_an_image.jpg", "truncated.jpg")
    )
    assert "(2 unreadable skipped)" in result.stdout


def test_train_errors_are_clear(tmp_path):
    result = fasternet_cli("train", *QUICK, "--data", str(tmp_path), "--output", str(tmp_path / "o"), check=False)
    assert result.returncode == 1 and "train/ and val/" in result.stderr and "Traceback" not in result.stderr


class _NaNOnCall(torch.nn.Module):
    """The model, except that the chosen forward calls return NaN logits (a batch gone bad)."""

    def __init__(self, model, bad_calls):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, set(bad_calls), 0

    def forward(self, x):
        self.calls += 1
        out = self.model(x)
        return out * float("nan") if self.calls in self.bad_calls else out


def _one_epoch(dataset, model, **kwargs):
    from fasternet.io.images import ImageFolder, collate_skipping_failures
    from fasternet.training.augment import BatchAugment, Mixup, SampleParams
    from fasternet.training.data import EpochSampler, TrainCrop, TrainingImages

    images = TrainingImages(ImageFolder(dataset / "train"), crop=TrainCrop(), augment_params=SampleParams())
    sampler = EpochSampler(len(images), global_batch=4)
    sampler.set_epoch(0, 32)
    loader = torch.utils.data.DataLoader(images, batch_size=4, sampler=sampler, collate_fn=collate_skipping_failures)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    augment = BatchAugment(mean=(0.5,) * 3, std=(0.25,) * 3, randaugment=None, mixup=Mixup(num_classes=3))
    return fasternet.training.train_one_epoch(
        model, loader, optimizer, augment=augment, device=torch.device("cpu"), scaler=torch.amp.GradScaler("cpu",
        enabled=False), autocast_dtype=None, clip_grad=None, **kwargs,
    )  # fmt: skip


def test_a_batch_with_a_nan_loss_is_skipped_and_training_goes_on(dataset):
    torch.manual_seed(0)
    model = _NaNOnCall(fasternet.create_model("fasternet_t0", num_classes=3), bad_calls={2})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = _one_epoch(dataset, model)
    assert stats.nonfinite_steps == 1 and stats.images == 24 - 4  # five of six batches trained
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(before["model.classifier.weight"], after["model.classifier.weight"])


def test_a_loss_that_stays_nan_stops_the_run_with_a_clear_message(dataset):
    model = _NaNOnCall(fasternet.create_model("fasternet_t0", num_classes=3), bad_calls=range(1, 100))
    with pytest.raises(FloatingPointError, match="not finite for 3 batches in a row; lower the learning rate"):
        _one_epoch(dataset, model, max_nonfinite=3)


def test_fine_tuning_a_trained_run_on_other_classes_with_frozen_stages(dataset, tmp_path):
    first = tmp_path / "first"
    fasternet_cli("train", *QUICK, "--data", str(dataset), "--output", str(first), "--epochs", "1", "--workers", "0")
    other = make_dataset(tmp_path / "other", classes=2, train=8, val=2)
    tuned = tmp_path / "tuned"
    result = fasternet_cli(
        "train", "--pretrained", str(first / "best.safetensors"), "--recipe", "finetune", "--data", str(other),
        "--output", str(tuned), "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--freeze-stages", "2",
        "--head-lr-scale", "10", "--workers", "0", "--no-progress", "--amp", "off",
    )  # fmt: skip
    err = result.stderr
    assert "training fasternet_t0 on 16 images (2 classes)" in err  # the variant read from the checkpoint
    assert "stem and 2 stages frozen" in err and "head lr x10" in err
    assert "left initialized: classifier.weight, classifier.bias" in err
    assert "classifier not loaded: the checkpoint has 3 classes, the model 2" in err
    start, end = fasternet.create_model(first / "best.safetensors"), fasternet.create_model(tuned / "best.safetensors")
    assert end.class_names == ["class_0", "class_1"] and end.num_classes == 2
    frozen = ("patch_embed.", "stages.0.", "stages.1.")
    for key, value in end.state_dict().items():
        if key.startswith(frozen):  # weights and BN statistics untouched
            assert torch.equal(value, start.state_dict()[key]), key
    assert not torch.equal(end.stages[3].blocks[0].mlp[0].weight, start.stages[3].blocks[0].mlp[0].weight)


def test_fine_tuning_on_as_many_other_classes_starts_a_new_classifier(dataset, tmp_path):
    """Same class count, other names: the kept classifier would answer with the old labels."""
    first = tmp_path / "first"
    fasternet_cli("train", *QUICK, "--data", str(dataset), "--output", str(first), "--epochs", "1", "--workers", "0")
    other = make_dataset(tmp_path / "other", classes=3, train=8, val=2)
    for split in ("train", "val"):
        for i, name in enumerate(["bag", "sandal", "shirt"]):
            (other / split / f"class_{i}").rename(other / split / name)
    result = fasternet_cli(
        "train", "--pretrained", str(first / "best.safetensors"), "--recipe", "finetune", "--data", str(other),
        "--output", str(tmp_path / "tuned"), "--epochs", "1", "--batch-size", "8", "--image-size", "32",
        "--workers", "0", "--no-progress", "--amp", "off",
    )  # fmt: skip
    assert "classifier re-initialized: the checkpoint was trained on other classes (class_0, class_1, class_2)" in (
        result.stderr
    )
    assert fasternet.create_model(tmp_path / "tuned" / "best.safetensors").class_names == ["bag", "sandal", "shirt"]


def test_a_kept_classifier_follows_the_data_class_order():
    from fasternet.training.run import match_classifier

    model = fasternet.create_model("fasternet_t0", num_classes=3)
    model.class_names = ["coat", "bag", "shirt"]
    rows = model.classifier.weight.detach().clone()
    match_classifier(model, ["bag", "coat", "shirt"])
    assert torch.equal(model.classifier.weight, rows[[1, 0, 2]])
    backbone = model.conv_head.weight.detach().clone()
    match_classifier(model, ["sandal", "sneaker", "boot"])  # other classes, as many: a new classifier
    assert model.classifier.weight.shape == (3, model.head_hidden_size)
    assert not any(torch.allclose(row, old) for row in model.classifier.weight for old in rows)
    assert torch.equal(model.conv_head.weight, backbone)


def test_fine_tuning_from_a_variant_name_uses_its_release(dataset, tmp_path):
    from fasternet._utils import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    release = cache_dir() / fasternet.get_weights("fasternet_t0").file_name
    torch.save(fasternet.convert_state_dict(fasternet.create_model("fasternet_t0").state_dict(), "official"), release)
    out = tmp_path / "ft"
    env = {**ENV, "FASTERNET_HOME": str(cache_dir())}
    result = fasternet_cli(
        "train", "--pretrained", "fasternet_t0", "--recipe", "finetune", "--data", str(dataset), "--output",
        str(out), "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--workers", "0", "--no-progress",
        env=env,
    )  # fmt: skip
    assert f"from {release}" in result.stderr and "peak lr 6.25e-05 (0.008 x 8 / 1024)" in result.stderr
