"""Every Python block and every command of the README runs, in order, in one folder, on small data.

The suite runs under xdist with ``--dist loadfile``: one worker runs this file, in order.

Blocks marked ``<!-- readme-test: skip: ... -->`` (network or GPU) are skipped with their reason;
``env=detection`` blocks run in ``tests/with_torchvision/test_readme_detection.py``. See
``tests/readme.py`` for the small-data changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import readme
from fasternet.cli import build_parser

BLOCKS = [b for b in readme.blocks() if b.lang in ("python", "bash") and b.env == "core" and b.section != "Benchmarks"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("readme")
    home = root / "fasternet_home"
    readme.place_release_files(home, ["fasternet_t0"])
    fashion = readme.write_fake_fashion_mnist(root / "fashion_idx")
    work = root / "work"
    work.mkdir()
    return work, readme.environment(home), fashion


def test_the_readme_has_blocks_of_each_kind():
    kinds = {(b.lang, b.env) for b in readme.blocks()}
    assert {("python", "core"), ("bash", "core"), ("python", "detection"), ("bash", "detection")} <= kinds
    skipped = [b for b in readme.blocks() if b.skip_reason]
    assert all(re.search(r"network|GPU", b.skip_reason) for b in skipped), [b.skip_reason for b in skipped]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, workdir):
    if block.skip_reason:
        pytest.skip(block.skip_reason)
    work, env, fashion = workdir
    readme.run_block(block, work, env, fashion)


def _synopsis() -> list[str]:
    block = next(b for b in readme.blocks() if b.lang == "" and b.body.startswith("fasternet list"))
    return [line.split("  #")[0].strip() for line in block.body.splitlines()]


def test_the_command_line_synopsis_is_what_the_parser_accepts():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # subcommand -> parser
    shown = set()
    for line in _synopsis():
        words = line.split()
        assert words[0] == "fasternet" and words[1] in commands, line
        shown.add(words[1])
        options = {s for action in commands[words[1]]._actions for s in action.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
            assert flag in options, f"{line}: fasternet {words[1]} has no {flag}"
    assert shown == set(commands), f"commands missing from the synopsis: {set(commands) - shown}"


def test_every_benchmark_script_the_readme_names_exists_and_parses_its_flags():
    text = readme.README.read_text()
    for name in sorted(set(re.findall(r"benchmarks/([a-z_0-9]+\.(?:py|sh))", text))):
        path = readme.REPO / "benchmarks" / name
        assert path.is_file(), name
        if name.endswith(".py") and "detection" not in name:  # detection scripts: tests/with_torchvision
            result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{name} --help: {result.stderr[-2000:]}"
