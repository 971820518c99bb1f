"""Learning-rate schedules: per step (the default) against a hand-computed table, and per epoch
against the official scheduler's own update rule, epoch by epoch, for the T0 and L recipes."""

from __future__ import annotations

import math

import pytest
import torch

import fasternet
from fasternet.training.schedule import LrSchedule


def test_per_step_schedule_against_a_hand_computed_table():
    # peak 0.01 from 0.001 over 1.5 epochs of 4 steps = 6 warm-up steps, cosine to 0.0001 over 40 steps in all.
    schedule = LrSchedule(peak=0.01, warmup_lr=0.001, min_lr=0.0001, warmup_epochs=1.5, epochs=10, steps_per_epoch=4)
    assert schedule.warmup_steps == 6 and schedule.total_steps == 40
    table = {
        0: 0.001,
        1: 0.0025,  # 0.001 + 0.009 * 1/6
        3: 0.0055,
        5: 0.0085,
        6: 0.01,  # the peak, right after the warm-up
        23: 0.0001 + 0.5 * 0.0099 * (1 + math.cos(math.pi * 17 / 34)),  # half-way down the cosine: 0.00505
        40: 0.0001,  # the end
    }
    for step, expected in table.items():
        assert schedule(step) == pytest.approx(expected, rel=1e-12), step
    assert schedule(23) == pytest.approx(0.00505)
    assert all(schedule(i) > schedule(i + 1) for i in range(6, 40))  # decreasing after the warm-up


def test_no_warmup_starts_at_the_peak():
    schedule = LrSchedule(peak=0.003, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=0, epochs=5, steps_per_epoch=63)
    assert schedule(0) == pytest.approx(0.003) and schedule.warmup_steps == 0
    assert schedule(5 * 63) == pytest.approx(1e-5)


def _official_per_epoch(peak, warmup_lr, min_lr, warmup, epochs):
    """The official recipe's scheduler (pl_bolts' LinearWarmupCosineAnnealingLR) by its own recursive
    update rule, one step per epoch: each epoch's rate from the previous one."""
    rates = [warmup_lr]
    for epoch in range(1, epochs + 1):
        last = rates[-1]
        if epoch < warmup:
            rates.append(last + (peak - warmup_lr) / (warmup - 1))
        elif epoch == warmup:
            rates.append(peak)
        else:
            span = epochs - warmup
            ratio = (1 + math.cos(math.pi * (epoch - warmup) / span)) / (
                1 + math.cos(math.pi * (epoch - warmup - 1) / span)
            )
            rates.append(ratio * (last - min_lr) + min_lr)
    return rates


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_l"])
def test_per_epoch_schedule_equals_the_official_scheduler_epoch_by_epoch(name):
    recipe = fasternet.recipe_for(name, schedule="epoch")
    schedule = LrSchedule(
        recipe.peak_lr, recipe.warmup_lr, recipe.min_lr, recipe.warmup_epochs, recipe.epochs, mode="epoch"
    )
    official = _official_per_epoch(recipe.peak_lr, recipe.warmup_lr, recipe.min_lr, 20, 300)
    for epoch in range(300):
        assert schedule(epoch) == pytest.approx(official[epoch], rel=1e-9, abs=1e-15), epoch
    assert schedule(19) == schedule(20) == recipe.peak_lr  # peak after warmup_epochs - 1 steps, held one more


def test_a_real_optimizer_follows_the_per_epoch_schedule_through_lambdalr():
    recipe = fasternet.recipe_for("fasternet_l", schedule="epoch")
    schedule = LrSchedule(
        recipe.peak_lr, recipe.warmup_lr, recipe.min_lr, recipe.warmup_epochs, recipe.epochs, mode="epoch"
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.peak_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule(i) / recipe.peak_lr)
    seen = []
    for _ in range(300):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    official = _official_per_epoch(recipe.peak_lr, recipe.warmup_lr, recipe.min_lr, 20, 300)
    assert seen == pytest.approx(official[:300], rel=1e-9)


def test_schedule_errors():
    with pytest.raises(ValueError, match="whole"):
        LrSchedule(0.1, 0.0, 0.0, 1.5, 10, mode="epoch")
    with pytest.raises(ValueError, match="schedule must be"):
        LrSchedule(0.1, 0.0, 0.0, 1, 10, mode="linear")
    with pytest.raises(ValueError, match="warmup_epochs"):
        fasternet.recipe_for("fasternet_t0", epochs=5, warmup_epochs=6)
