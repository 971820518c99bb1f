"""RandAugment (timm's increasing set, per sample), flip, mixup/cutmix targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from fasternet.training.augment import OPS, BatchAugment, Mixup, RandAugmentSpec, SampleParams, _apply_op

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_parse_recipe_strings():
    spec = RandAugmentSpec.parse("rand-m7-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.num_ops, spec.prob, spec.increasing) == (7, 0.5, 2, 0.5, True)
    assert RandAugmentSpec.parse("rand-m3-n3-mstd0.5-inc1").num_ops == 3
    for bad in ("rand", "augmix-m3", "rand-q7", "rand-mstd0.5"):
        with pytest.raises(ValueError):
            RandAugmentSpec.parse(bad)


def test_sample_params_are_per_sample_and_reproducible():
    params = SampleParams(RandAugmentSpec.parse("rand-m7-mstd0.5-inc1"))
    a = torch.stack([params(np.random.default_rng([0, 0, i])) for i in range(200)])
    b = torch.stack([params(np.random.default_rng([0, 0, i])) for i in range(200)])
    assert torch.equal(a, b) and a.shape == (200, params.width)
    assert 0.35 < a[:, 0].mean() < 0.65  # flip half of the time
    ops = a[:, 1].long()
    assert len(torch.unique(ops)) == len(OPS)  # every op is drawn somewhere: per sample, not per batch
    magnitudes = a[:, 3]
    assert 6 < magnitudes.mean() < 8 and magnitudes.std() > 0.2 and magnitudes.max() <= 10


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize(
    "op, level, reference",
    [
        ("invert", 5.0, lambda im: ImageOps.invert(im)),
        ("solarize", 5.0, lambda im: ImageOps.solarize(im, 128)),
        ("posterize", 5.0, lambda im: ImageOps.posterize(im, 2)),
        ("brightness", 5.0, lambda im: ImageEnhance.Brightness(im).enhance(1.45)),
        ("color", -5.0, lambda im: ImageEnhance.Color(im).enhance(0.55)),
        ("contrast", 5.0, lambda im: ImageEnhance.Contrast(im).enhance(1.45)),
        ("auto_contrast", 5.0, lambda im: ImageOps.autocontrast(im)),
    ],
)
def test_pixel_ops_match_pil_like_timm(op, level, reference):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.integers(40, 200, (16, 16, 3))).astype(np.uint8))
    x = _tensor(image).unsqueeze(0)
    out = _apply_op(op, x, torch.tensor([level]), torch.zeros(1, 3, 1, 1))[0]
    expected = _tensor(reference(image))
    assert (out - expected).abs().max() <= 2.5 / 255


def test_geometric_ops_move_pixels_and_fill_with_the_mean():
    x = torch.rand(2, 3, 16, 20)
    fill = torch.tensor(MEAN).view(1, 3, 1, 1)
    out = _apply_op("translate_x", x, torch.tensor([10.0, 10.0]), fill)
    shift = 9  # 0.45 of the width at full magnitude
    torch.testing.assert_close(out[..., shift:], x[..., :-shift], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., :shift], fill.expand(2, 3, 16, shift), atol=1e-5, rtol=0)


def test_mixup_and_cutmix_targets_sum_to_one_and_follow_lambda():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3])
    x = torch.rand(4, 3, 8, 8)
    mixed, targets = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=5)(x, labels)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    lam = (targets[0, 0] - 0.02) / 0.9
    torch.testing.assert_close(mixed[0], x[0] * lam + x[3] * (1 - lam), atol=1e-5, rtol=0)
    _, cut_targets = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=5)(x, labels)
    torch.testing.assert_close(cut_targets.sum(1), torch.ones(4))
    plain = Mixup(num_classes=5, label_smoothing=0.1).targets(labels, 1.0)
    assert plain[0].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])


def test_batch_augment_flips_the_chosen_samples_and_normalizes():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    params = torch.tensor([[1.0], [0.0]])
    augment = BatchAugment(mean=MEAN, std=STD, randaugment=None, mixup=Mixup(num_classes=3, label_smoothing=0))
    x, targets = augment(images, torch.tensor([0, 2]), params)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x[0], (images[0].float().flip(-1) / 255 - mean) / std)
    torch.testing.assert_close(x[1], (images[1].float() / 255 - mean) / std)
    assert targets.tolist() == [[1, 0, 0], [0, 0, 1]]


def test_batch_augment_with_randaugment_runs_every_op():
    spec = RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    params = torch.zeros(len(OPS), 9)
    params[:, 1] = torch.arange(len(OPS))
    params[:, 2] = 1
    params[:, 3] = 9
    params[:, 4] = 1
    augment = BatchAugment(mean=MEAN, std=STD, randaugment=spec, mixup=Mixup(num_classes=2))
    # Not the full 0-255 range: auto-contrast leaves an image that already spans it unchanged.
    images = torch.randint(
        20, 230, (len(OPS), 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x, _ = augment(images, torch.zeros(len(OPS), dtype=torch.long), params)
    plain, _ = BatchAugment(mean=MEAN, std=STD, randaugment=None, mixup=Mixup(num_classes=2))(
        images, torch.zeros(len(OPS), dtype=torch.long), params[:, :1]
    )
    changed = (x - plain).flatten(1).abs().amax(1) > 1e-3
    assert changed.all(), [OPS[i] for i in range(len(OPS)) if not changed[i]]
    assert torch.isfinite(x).all()
