"""A script run as one job: the X/Y/Z plot's cells or a list of prompts, planned before the job is queued.

The API and the UI turn A1111's ``script_name``/``script_args`` into a :class:`ScriptPlan` (``webui.scripts``)
and put it on the request (``GenerationRequest.script``); ``resolve_request`` resolves every cell at submit
time, so a bad cell is refused before anything runs, and the queued job holds plain data only. The service's
worker then runs the cells in :attr:`ScriptPlan.order` (``webui.scripts.runner``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

XYZ_PLOT = "x/y/z plot"
PROMPTS_FROM_FILE = "prompts from file or textbox"


@dataclass(frozen=True)
class ScriptCell:
    """One generation of a script: its request (a ``GenerationRequest`` when planned, a ``ResolvedRequest``
    once resolved) and its checkpoint (None: the job's model)."""

    request: Any
    model_name: str | None = None


@dataclass(frozen=True)
class GridLayout:
    """How the X/Y/Z plot draws its cells: ``labels`` per axis (x, y, z), cell ``i`` at
    ``x = i % nx, y = i // nx % ny, z = i // (nx * ny)``, and A1111's options."""

    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    z_labels: tuple[str, ...]
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    margin_size: int = 0


@dataclass(frozen=True)
class ScriptPlan:
    """The cells of a script, in grid order; ``order`` is the order to run them (a checkpoint axis outermost,
    so that each model loads once); ``grid`` None: no grid (a prompt list)."""

    name: str
    cells: tuple[ScriptCell, ...]
    order: tuple[int, ...]
    grid: GridLayout | None = None
