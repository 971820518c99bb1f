"""Decoding every image mode, the eval transform, the crop, the sampler, Fashion-MNIST preparation."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasternet import EvalTransform, prepare_fashion_mnist
from fasternet.io.images import ImageFolder, Unreadable, collate_skipping_failures, expand_image_paths, load_image
from fasternet.training.data import EpochSampler, ShardSampler, TrainCrop
from imagetools import make_folder, write_awkward_images


def test_every_readable_mode_becomes_rgb_and_broken_files_raise(tmp_path):
    expected = write_awkward_images(tmp_path)
    for name, readable in expected.items():
        if readable:
            image = load_image(tmp_path / name)
            assert image.mode == "RGB", name
        else:
            with pytest.raises(Exception):  # noqa: B017 (PIL raises several types)
                load_image(tmp_path / name)


def test_cmyk_and_rgba_keep_their_colors(tmp_path):
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    red.convert("CMYK").save(tmp_path / "red.jpg", quality=100)
    assert np.allclose(np.asarray(load_image(tmp_path / "red.jpg"))[8, 8], (220, 20, 20), atol=12)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]


def test_image_folder_sets_unreadable_images_aside_and_names_them(tmp_path):
    expected = write_awkward_images(tmp_path / "only")
    folder = ImageFolder(tmp_path, transform=EvalTransform(32, 1.0))
    assert folder.classes == ["only"] and len(folder) == len(expected)
    loader = torch.utils.data.DataLoader(folder, batch_size=4, collate_fn=collate_skipping_failures)
    total, unreadable = 0, []
    for batch, failed in loader:
        unreadable += failed
        total += 0 if batch is None else batch[0].shape[0]
    assert total == 6
    assert sorted(Path(u.path).name for u in unreadable) == ["not_an_image.jpg", "truncated.jpg"]
    assert all(isinstance(u, Unreadable) and u.reason for u in unreadable)


def test_a_folder_given_as_images_means_the_images_in_it(tmp_path):
    write_awkward_images(tmp_path / "pics")
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    (tmp_path / "pics" / "deeper").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "pics" / "deeper" / "z.png")
    single = tmp_path / "single.txt"
    found = expand_image_paths([tmp_path / "pics", single])
    names = ["cmyk.jpg", "deeper/z.png", "gray.png", "not_an_image.jpg", "palette.png", "rgba.png"]
    names += ["sixteen_bit.png", "tiny.png", "truncated.jpg"]
    assert [p.relative_to(tmp_path / "pics").as_posix() for p in found[:-1]] == sorted(names)
    assert found[-1] == single  # a file is taken as given, whatever its name


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolder(tmp_path / "empty")


def test_eval_transform_resizes_short_side_to_size_over_crop_pct_then_center_crops():
    image = Image.fromarray(np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8))
    transform = EvalTransform(224, 0.9)
    x = transform(image)
    assert x.shape == (3, 224, 224)
    assert math.floor(224 / 0.9) == 248
    resized = image.resize((331, 248), Image.BICUBIC)  # short side 248, aspect kept
    left, top = (331 - 224) // 2, (248 - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    mean, std = np.array((0.485, 0.456, 0.406)), np.array((0.229, 0.224, 0.225))
    expected = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1)).float()
    torch.testing.assert_close(x, expected)


def test_train_crop_is_reproducible_per_sample_and_covers_the_scale_range():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8))
    crop = TrainCrop()
    a = crop(image, 32, np.random.default_rng([0, 1, 5]))
    b = crop(image, 32, np.random.default_rng([0, 1, 5]))
    c = crop(image, 32, np.random.default_rng([0, 2, 5]))
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    tiny = Image.new("RGB", (8, 8), (1, 2, 3))
    assert crop(tiny, 32, np.random.default_rng(0)).shape == (3, 32, 32)


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_batches_equal_the_single_process_global_batches(world_size):
    global_batch, n = 8, 37
    single = [i for i, _, _ in EpochSampler(n, seed=3, global_batch=global_batch)]
    shards = [
        [i for i, _, _ in EpochSampler(n, rank=r, world_size=world_size, seed=3, global_batch=global_batch)]
        for r in range(world_size)
    ]
    local = global_batch // world_size
    assert len(single) == 32 and all(len(s) == 32 // world_size for s in shards)
    for step in range(len(single) // global_batch):
        together = sorted(i for s in shards for i in s[step * local : (step + 1) * local])
        assert together == sorted(single[step * global_batch : (step + 1) * global_batch])


def test_evaluation_shards_visit_every_sample_once():
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochSampler(20, seed=1, global_batch=4)
    s.set_epoch(2, 32)
    first = list(s)
    assert first[0][1:] == (2, 32)
    s.set_epoch(3, 32)
    assert list(s) != first
    again = EpochSampler(20, seed=1, global_batch=4)
    again.set_epoch(2, 32)
    assert list(again) == first


def _write_idx(path, array, magic):
    header = struct.pack(">II", magic, len(array)) + (struct.pack(">II", *array.shape[1:]) if magic == 2051 else b"")
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepare_fashion_mnist_from_idx_files(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (30, 28, 28))
    labels = np.arange(30) % 10
    for prefix in ("train", "t10k"):
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    out = prepare_fashion_mnist(tmp_path / "fm", source=source, train=20, val=10, progress=False)
    train = ImageFolder(out / "train")
    assert len(train) == 20 and len(ImageFolder(out / "val")) == 10
    assert len(train.classes) == 10 and "ankle_boot" in train.classes
    first = out / "train" / "t-shirt_top" / "00000.png"
    assert np.array_equal(np.asarray(Image.open(first)), images[0])


def test_prepare_fashion_mnist_names_the_package_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "fm", source=tmp_path / "nowhere", progress=False)


def test_make_folder_helper_is_readable(tmp_path):
    folder = ImageFolder(make_folder(tmp_path, classes=2, per_class=2))
    assert len(folder) == 4
