"""Resumable training state: one ``torch.save`` file per phase, written atomically.

A state file holds plain tensors and numbers only (model and optimizer state dicts, the step,
the loss history), so it is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file, so an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any] | None:
    """The state saved at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def step_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, phase, step): a resumed run draws the same noise."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + phase * 100_000_007 + step)
