"""The README's benchmark commands, on small data (a file of its own so that xdist runs it beside the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

import readme

BLOCKS = [b for b in readme.blocks() if b.lang in ("python", "bash") and b.section == "Benchmarks"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("readme_bench")
    home = root / "fasternet_home"
    home.mkdir()
    fashion = readme.write_fake_fashion_mnist(root / "fashion_idx")
    work = root / "work"
    readme.prepare_fashion_mnist(work, fashion)
    return work, readme.environment(home), fashion


def test_the_benchmarks_section_has_commands():
    assert any(b.lang == "bash" for b in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_benchmark_block(block, workdir):
    assert not block.skip_reason
    work, env, fashion = workdir
    readme.run_block(block, work, env, fashion)
