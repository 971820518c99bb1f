"""What a training run keeps on disk and in its random generators, crash-safe and resumable.

Shared by classification and detection training. Files are written with
:func:`fasternet._utils.atomic_write`: a kill at any moment leaves the previous file or the new
one, never half of one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasternet._utils import atomic_write

__all__ = ["load_resume_state", "rng_state", "save_run_state", "seed_epoch", "set_rng_state", "write_log"]


def save_run_state(state: Mapping[str, Any], path: Path) -> None:
    """``last.pt``: everything a resume needs (weights, optimizer, epoch, RNG states, settings)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def write_log(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``log.jsonl``: one JSON line per completed epoch."""
    atomic_write(path, "".join(json.dumps(dict(record)) + "\n" for record in records))


def load_resume_state(
    last_path: Path, log_path: Path, settings: Mapping[str, Any], stateful: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict]]:
    """Restore ``stateful`` (name -> object with ``load_state_dict``: model, optimizer, ...) and the
    RNGs from the state saved after the last completed epoch; returns that state and the log
    records up to it.

    Refuses to resume with other settings: the result would match neither run.
    """
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    if state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise ValueError(f"--resume with other settings than the interrupted run: {', '.join(changed)}")
    history = []
    if log_path.exists():
        history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    set_rng_state(state["rng"])
    return state, [record for record in history if record["epoch"] < state["epoch"]]


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """All randomness of an epoch (drop path, mixup) derives from (seed, epoch, rank)."""
    derived = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)
