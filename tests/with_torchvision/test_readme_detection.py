"""The README's detection blocks (``env=detection``), run in order in one folder on the shared data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import readme

BLOCKS = [b for b in readme.blocks() if b.lang in ("python", "bash") and b.env == "detection"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("readme_detection")
    home = root / "fasternet_home"
    readme.place_release_files(home, ["fasternet_t0"])
    work = root / "work"
    work.mkdir()
    return work, readme.environment(home)


def test_the_readme_has_detection_blocks():
    assert {b.lang for b in BLOCKS} == {"python", "bash"}


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_detection_block(block, workdir):
    assert not block.skip_reason
    work, env = workdir
    readme.run_block(block, work, env, fashion_source=work)


def test_the_detection_benchmark_scripts_parse_their_flags():
    for name in ("detection_speed.py",):
        path = readme.REPO / "benchmarks" / name
        result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
