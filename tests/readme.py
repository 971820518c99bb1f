"""The README as a test: its code blocks, run in order in one folder, on small data.

A block may be preceded by ``<!-- readme-test: ... -->``: ``skip: REASON`` (network or GPU only),
``env=detection`` (runs in the torchvision environment, ``tests/with_torchvision``); any other
text is a note for the reader. Python blocks run as written. Shell blocks run each command with
the small-data changes of :data:`SMALL` (fewer epochs and rounds, one model instead of three),
so every command the README shows runs at least once.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import shlex
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from paths import REPO, SHARED

README = REPO / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<note>.*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str  # "python", "bash" or "" (output and synopses: not run)
    body: str
    line: int
    note: str = ""
    section: str = ""  # the "## " heading above it

    @property
    def skip_reason(self) -> str | None:
        return self.note.removeprefix("skip:").strip() if self.note.startswith("skip:") else None

    @property
    def env(self) -> str:
        return "detection" if "env=detection" in self.note else "core"

    @property
    def id(self) -> str:
        return f"README.md:{self.line:04d}"  # zero-padded: runners that sort by id keep the order


def blocks() -> list[Block]:
    text = README.read_text()
    found = []
    for m in _BLOCK.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: m.start()], re.M)
        line = text.count("\n", 0, m.start("body")) + 1
        found.append(Block(m["lang"], m["body"], line, m["note"] or "", headings[-1] if headings else ""))
    return found


def prepare_fashion_mnist(workdir: Path, fashion_source: Path) -> None:
    """``data/fmnist`` as the README's ``fasternet prepare fashion-mnist data/fmnist`` writes it, small."""
    import fasternet

    fasternet.prepare_fashion_mnist(
        workdir / "data" / "fmnist", source=fashion_source, train=256, val=64, progress=False
    )


def commands(block: Block) -> Iterator[str]:
    """The commands of a shell block, continuation lines joined, comments dropped."""
    joined = block.body.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split("   # ")[0].split("  # ")[0].strip()
        if line and not line.startswith("#"):
            yield line


# Small-data changes, applied to every shell command: (pattern, replacement).
SMALL = [
    (r"--epochs \d+", "--epochs 1"),
    (r"--rounds \d+", "--rounds 1"),
    (r"--batch-sizes \d+", "--batch-sizes 2"),
    (r"--models ([a-z0-9_]+)(,[a-z0-9_]+)+", r"--models \1"),
    (r"--nproc_per_node=\d+", "--nproc_per_node=2"),
]


def small(command: str, fashion_source: Path) -> list[str]:
    """The argv that runs ``command`` on the test's small data."""
    for pattern, replacement in SMALL:
        command = re.sub(pattern, replacement, command)
    argv = shlex.split(command)
    if argv[:3] == ["fasternet", "prepare", "fashion-mnist"]:
        argv += ["--source", str(fashion_source), "--train", "256", "--val", "64"]
    if argv[:2] == ["fasternet", "bench"]:  # one round, small images, few calibration images
        argv += [] if "--rounds" in argv else ["--rounds", "1"]
        argv += [] if "--image-size" in argv or "operators" in argv else ["--image-size", "64"]
        argv += ["--samples", "8"] if "--calibration" in argv else []
    argv = [str(SHARED / "data" / a.split("/shared/data/", 1)[1]) if "/shared/data/" in a else a for a in argv]
    if argv[0] == "fasternet":
        return [sys.executable, "-m", "fasternet", *argv[1:]]
    if argv[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise ValueError(f"the README test does not know how to run: {command}")


def is_install_line(command: str) -> bool:
    """The set-up lines (venv + pip + the main job or pytest): what .ci/run runs, not repeated here."""
    return command.startswith("python3 -m venv")


def write_fake_fashion_mnist(folder: Path) -> Path:
    """IDX files in Fashion-MNIST's format: 28x28 images whose bright band depends on the class."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 512), ("t10k", 128)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 8, :] += 180
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            shape = struct.pack(">II", 28, 28) if magic == 2051 else b""
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(struct.pack(">II", magic, count) + shape + array.astype(np.uint8).tobytes())
    return folder


def place_release_files(home: Path, names: list[str]) -> None:
    """Files at the paths a download of the release would write (random weights, official layout)."""
    import fasternet

    home.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = fasternet.create_model(name)
        target = home / fasternet.get_weights(name).file_name
        torch.save(fasternet.convert_state_dict(model.state_dict(), "official"), target)


def run_block(block: Block, workdir: Path, env: dict[str, str], fashion_source: Path, timeout: int = 900) -> None:
    if block.lang == "python":
        result = subprocess.run(
            [sys.executable, "-c", block.body], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{block.id} failed:\n{block.body}\n{result.stderr[-4000:]}"
        return
    for command in commands(block):
        if is_install_line(command):
            continue
        argv = small(command, fashion_source)
        result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{block.id}: `{command}` failed:\n{result.stderr[-4000:]}"


def environment(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FASTERNET_HOME": str(home),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
