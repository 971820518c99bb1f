"""The profiler: per-layer MACs and memory access that add up, checked against torch's counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fasternet
from conftest import TINY
from fasternet import FasterNet


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_s", "fasternet_l"])
@pytest.mark.parametrize("size", [224, 160])
def test_mac_totals_agree_with_torch_flop_counter_exactly(name, size):
    with torch.device("meta"):
        model = fasternet.create_model(name)
    report = fasternet.profile(model, (2, 3, size, size))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, size, size, device="meta"))
    assert report.macs * 2 == counter.get_total_flops()
    assert report.params == sum(p.numel() for p in model.parameters())


def test_pconv_row_follows_the_paper_formulas():
    model = FasterNet(**TINY)
    report = fasternet.profile(model, (1, 3, 64, 64))
    row = next(r for r in report.rows if r.name == "stages.0.blocks.0.spatial_mixing")
    h = w = 16
    c_p = 16 // 4
    assert row.type == "PConv"
    assert row.macs == h * w * 9 * c_p**2
    assert row.memory_access == h * w * 2 * c_p + 9 * c_p**2
    assert row.params == 9 * c_p**2


def test_conv_row_counts_input_output_and_weights():
    report = fasternet.profile(FasterNet(**TINY), (1, 3, 64, 64))
    row = next(r for r in report.rows if r.name == "stages.0.blocks.0.mlp.0")
    assert row.macs == 16 * 16 * 16 * 32
    assert row.memory_access == 16 * 16 * 16 + 16 * 16 * 32 + 16 * 32


def test_pconv_moves_a_fraction_of_a_full_conv():
    """The paper's point: PConv's memory access is about 1/4 of a regular conv's at r = 1/4."""
    report = fasternet.profile(FasterNet(**TINY), (1, 3, 64, 64))
    pconv = next(r for r in report.rows if r.type == "PConv")
    full_conv_memory = 16 * 16 * 2 * 16 + 9 * 16**2
    assert pconv.memory_access / full_conv_memory < 0.3


def test_grouping_and_table():
    report = fasternet.profile(FasterNet(**TINY), (1, 3, 64, 64))
    assert list(report.groups()) == ["stem", "stage 0", "stage 1", "stage 2", "stage 3", "head"]
    table = report.table()
    assert table.splitlines()[-1].startswith("total")
    assert f"{report.params:,}" in table.splitlines()[-1]
    assert len(report.table(by_stage=True).splitlines()) == 2 + 6 + 2


def test_profile_restores_training_mode_and_includes_output_norms():
    model = FasterNet(**{**TINY, "features_only": True}).train()
    report = fasternet.profile(model, (1, 3, 64, 64))
    assert model.training
    assert "output norms" in report.groups()
    assert report.params == sum(p.numel() for p in model.parameters())
