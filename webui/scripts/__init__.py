"""AUTOMATIC1111's built-in scripts, run as one job: the X/Y/Z plot (:mod:`.xyz_plot`), prompts from a file
or textbox (:mod:`.prompts_from_file`); :mod:`.runner` runs a planned script's cells, :mod:`.grid` draws grids.

:func:`plan_script` is what the API and the UI call with A1111's ``script_name`` / ``script_args``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.script_plan import PROMPTS_FROM_FILE, XYZ_PLOT, ScriptPlan

# Script names as A1111's ``GET /sdapi/v1/scripts`` lists them (lower case), per tab.
SCRIPT_NAMES = (XYZ_PLOT, PROMPTS_FROM_FILE)


def plan_script(
    name: str,
    script_args: Sequence[Any],
    base: GenerationRequest,
    model_name: str | None,
    resolve_model: Callable[[str], str],
) -> ScriptPlan:
    """The plan of script ``name`` (any case) for ``base``; ``InvalidRequest`` for an unknown script or bad args."""
    key = name.strip().lower()
    if key == XYZ_PLOT:
        from webui.scripts.xyz_plot import plan_xyz

        return plan_xyz(base, script_args, model_name, resolve_model)
    if key == PROMPTS_FROM_FILE:
        from webui.scripts.prompts_from_file import plan_prompts

        return plan_prompts(base, script_args, model_name)
    raise InvalidRequest("script_name", f"unknown script {name!r} (this server has: {', '.join(SCRIPT_NAMES)})")
