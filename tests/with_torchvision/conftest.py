"""Tests that need torchvision (and timm): they run in the second environment of .ci/run
(torch 2.14.1 + torchvision 0.29.1 + timm). Where torchvision does not import (the CPU torch
build cannot load the CUDA torchvision wheel), they are not collected."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared test helpers

try:
    import torchvision  # noqa: F401

    collect_ignore_glob: list[str] = []
except Exception:
    collect_ignore_glob = ["test_*.py"]
