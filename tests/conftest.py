"""Shared fixtures: the reference data in ../shared and small, fast model configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
VARIANT_KEYS = {
    "fasternet_t0": "t0",
    "fasternet_t1": "t1",
    "fasternet_t2": "t2",
    "fasternet_s": "s",
    "fasternet_m": "m",
    "fasternet_l": "l",
}

# A FasterNet small enough to run in milliseconds, with every structural feature of the real ones.
TINY = dict(embed_dim=16, depths=(1, 2, 1, 1), feature_dim=64, num_classes=10, act_layer="gelu")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (tests read ../shared next to the repository)")
    return path


@pytest.fixture(scope="session")
def layouts() -> dict:
    return json.loads(_require(REFERENCE / "checkpoint_layouts.json").read_text())


@pytest.fixture(scope="session")
def paper() -> dict:
    return json.loads(_require(REFERENCE / "paper_tables.json").read_text())


def load_reference(name: str) -> dict:
    """An official reference file with its fp16 tensors upcast to fp32."""
    ref = torch.load(_require(REFERENCE / name), weights_only=True)
    ref["input"] = ref["input"].float()
    ref["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    return ref


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/fasternet from a test."""
    monkeypatch.setenv("FASTERNET_HOME", str(tmp_path_factory.mktemp("fasternet_home")))
