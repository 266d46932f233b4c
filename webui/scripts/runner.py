"""Run a planned script (:class:`~webui.pipeline.script_plan.ScriptPlan`) as one job, cell after cell.

The service's worker calls :func:`run_script` for a job whose request carries a plan, with a function that
generates one cell on its model (loading it if needed) exactly as an ordinary job. Progress covers the whole
script (steps over all cells; ``image_index`` / ``images_total`` say which cell: "cell k/n"). An Interrupt
stops the script after the cell it hits, keeping the cells done; the grid then shows the missing cells black.
Images are saved through a :class:`ScriptImages` (the queue's writes each cell and the grid once, by name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from webui.pipeline.generation import GenerationControl, Progress
from webui.pipeline.requests import GenerationResult, ResolvedRequest
from webui.pipeline.script_plan import GridLayout, ScriptPlan
from webui.scripts.grid import annotate, image_grid

# (cell request, checkpoint name or None, progress adjuster) -> the cell's result
CellRunner = Callable[[ResolvedRequest, "str | None", Callable[[Progress], Progress]], GenerationResult]


class ScriptImages(Protocol):
    """Where a script's images are saved."""

    def cell(self, index: int, result: GenerationResult) -> list[Path]:
        """Save the images of cell ``index`` (of the plan's cells) as it finishes; returns their paths."""
        ...

    def grid(self, image: Image.Image, infotext: str, seed: int) -> Path | None:
        """Save an X/Y/Z plot's grid (A1111: in ``<outputs>/<mode>-grids/<date>/``); None if it was not saved."""
        ...


def run_script(
    request: ResolvedRequest, control: GenerationControl, generate_cell: CellRunner, images: ScriptImages | None
) -> GenerationResult:
    """The script's result: for an X/Y/Z plot the grid first (then sub-grids and cells when asked, as A1111),
    for a prompt list every image in order. ``images`` saves the cells and the grid (None: nothing saved)."""
    plan = request.script
    if plan is None:
        raise ValueError("the request carries no script")
    total_steps = sum(c.request.sampling_steps * c.request.n_iter for c in plan.cells)
    results: dict[int, GenerationResult] = {}
    done = 0
    for k, index in enumerate(plan.order):
        if control.interrupted:
            break
        cell = plan.cells[index]

        def adjust(progress: Progress, before: int = done, k: int = k) -> Progress:
            return replace(
                progress,
                step=before + progress.step,
                total_steps=total_steps,
                image_index=k,
                images_total=len(plan.cells),
                unit="cell" if plan.grid is not None else progress.unit,
            )

        results[index] = generate_cell(cell.request, cell.model_name, adjust)
        if images is not None and results[index].images:
            results[index].paths = images.cell(index, results[index])
        done += cell.request.sampling_steps * cell.request.n_iter
        if results[index].interrupted:
            break
    finished = [results[i] for i in range(len(plan.cells)) if i in results]
    out = GenerationResult(request=request, interrupted=control.interrupted or any(r.interrupted for r in finished))
    if finished:
        out.model_name, out.model_hash = finished[0].model_name, finished[0].model_hash
    if plan.grid is None:
        for r in finished:
            out.images += r.images
            out.seeds += r.seeds
            out.infotexts += r.infotexts
            out.paths += r.paths
            # A1111's all_prompts / all_negative_prompts / all_subseeds: each line's own, image by image
            count = len(r.images)
            out.prompts += [r.request.prompt if r.request is not None else ""] * count
            out.negative_prompts += [r.request.negative_prompt if r.request is not None else ""] * count
            out.subseeds += r.subseeds if len(r.subseeds) == count else [-1] * count
        if all(s == -1 for s in out.subseeds):
            out.subseeds = []  # no line used variation seeds
        return out
    return _xyz_result(plan, plan.grid, results, out, images)


def _xyz_result(
    plan: ScriptPlan,
    layout: GridLayout,
    results: dict[int, GenerationResult],
    out: GenerationResult,
    images: ScriptImages | None,
) -> GenerationResult:
    done = [r for r in results.values() if r.images]
    if not done:
        return out
    first = next(results[i] for i in range(len(plan.cells)) if i in results and results[i].images)
    size = first.images[0].size
    cells = [
        results[i].images[0] if i in results and results[i].images else Image.new("RGB", size)
        for i in range(len(plan.cells))
    ]
    infotexts = [results[i].infotexts[0] if i in results and results[i].images else "" for i in range(len(plan.cells))]
    seeds = [results[i].seeds[0] if i in results and results[i].images else 0 for i in range(len(plan.cells))]
    # info.all_prompts / all_negative_prompts: each image's own (a Prompt S/R cell's, a grid's first cell's)
    prompts = [(c.request.prompt, c.request.negative_prompt) for c in plan.cells]
    nx, ny, nz = len(layout.x_labels), len(layout.y_labels), len(layout.z_labels)
    sub_grids = []
    for iz in range(nz):
        chunk = cells[iz * nx * ny : (iz + 1) * nx * ny]
        grid = image_grid(chunk, rows=ny)
        if layout.draw_legend:
            grid = annotate(grid, size[0], size[1], layout.x_labels, layout.y_labels, layout.margin_size)
        sub_grids.append(grid)
    z_grid = image_grid(sub_grids, rows=1)
    if layout.draw_legend and nz > 1:
        z_grid = annotate(z_grid, sub_grids[0].width, sub_grids[0].height, layout.z_labels, [""])
    elif nz == 1:
        z_grid = sub_grids[0]
    grid_infotext = first.infotexts[0]
    out.images = [z_grid]
    out.infotexts = [grid_infotext]
    out.seeds = [first.seeds[0]]
    shown = [prompts[0]]
    grid_path = images.grid(z_grid, grid_infotext, first.seeds[0]) if images is not None else None
    if grid_path is not None:
        out.paths.append(grid_path)
    if layout.include_sub_grids and nz > 1:
        out.images += sub_grids
        out.infotexts += [infotexts[iz * nx * ny] for iz in range(nz)]
        out.seeds += [seeds[iz * nx * ny] for iz in range(nz)]
        shown += [prompts[iz * nx * ny] for iz in range(nz)]
    if layout.include_lone_images:
        out.images += cells
        out.infotexts += infotexts
        out.seeds += seeds
        shown += prompts
    out.prompts, out.negative_prompts = [p for p, _ in shown], [n for _, n in shown]
    return out
