"""Image files of queued jobs: image ``i`` of a job has one name, so a job that runs again after a crash
writes the same files, never a second copy.

``<outputs>/<txt2img|img2img>/<YYYY-MM-DD>/<HHMMSS>-<job id[:8]>-<i>-<seed>.png``, the date and time being
when the job was submitted (so the files of a job sort in submission order and stay in one day's folder
whenever it runs). A file is written as ``<name>.part``, flushed to disk and renamed: a reader (or a crash)
sees a complete PNG or none, and the ``.part`` of a killed run is overwritten by the next one.

A script job (X/Y/Z plot, prompt list) names its files the same way (:class:`ScriptJobImages`): image ``i`` of
cell ``k`` is ``<HHMMSS>-<job id[:8]>-c<k>-<i>-<seed>.png`` beside the plain jobs' images, the grid
``<outputs>/<mode>-grids/<YYYY-MM-DD>/<HHMMSS>-<job id[:8]>-grid-<seed>.png``: a grid run again after a crash
writes no cell twice.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from webui.pipeline.outputs import day_folder, png_bytes_info

if TYPE_CHECKING:
    from webui.jobs import Job
    from webui.pipeline import GenerationResult


def job_image_path(outputs_dir: Path, job: Job, index: int, seed: int) -> Path:
    """Where image ``index`` (0-based, over the whole job) of ``job`` goes."""
    created = dt.datetime.fromtimestamp(job.created_at)
    folder = day_folder(outputs_dir, job.request.mode, created)
    return folder / f"{created:%H%M%S}-{job.id[:8]}-{index}-{seed}.png"


def write_once(image: Image.Image, path: Path, infotext: str | None) -> Path:
    """Write ``image`` to ``path`` with its ``parameters`` chunk unless that file exists already."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        image.save(f, format="PNG", pnginfo=png_bytes_info(infotext))
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    return path


def save_job_images(outputs_dir: Path, job: Job, result: GenerationResult) -> list[Path]:
    """Write every image of ``result`` under its job's names; returns the paths in image order (none for a job
    the queue's closing stopped: it runs again, see :attr:`Job.runs_again`)."""
    if job.runs_again:
        return []
    texts = list(result.infotexts) + [None] * (len(result.images) - len(result.infotexts))
    seeds = list(result.seeds) + [-1] * (len(result.images) - len(result.seeds))
    return [
        write_once(image, job_image_path(outputs_dir, job, i, seeds[i]), texts[i])
        for i, image in enumerate(result.images)
    ]


def script_cell_path(outputs_dir: Path, job: Job, cell: int, index: int, seed: int) -> Path:
    """Where image ``index`` of cell ``cell`` (the plan's cell index) of a script job goes."""
    created = dt.datetime.fromtimestamp(job.created_at)
    folder = day_folder(outputs_dir, job.request.mode, created)
    return folder / f"{created:%H%M%S}-{job.id[:8]}-c{cell}-{index}-{seed}.png"


def script_grid_path(outputs_dir: Path, job: Job, seed: int) -> Path:
    """Where a script job's grid goes (``<mode>-grids``, as A1111)."""
    created = dt.datetime.fromtimestamp(job.created_at)
    folder = day_folder(outputs_dir, f"{job.request.mode}-grids", created)
    return folder / f"{created:%H%M%S}-{job.id[:8]}-grid-{seed}.png"


@dataclass
class ScriptJobImages:
    """Writes a script job's cells and grid once each, by name (see :class:`webui.scripts.runner.ScriptImages`)."""

    outputs_dir: Path
    job: Job

    def cell(self, index: int, result: GenerationResult) -> list[Path]:
        if self.job.runs_again:  # a cell cut short by the queue closing: the re-run writes it
            return []
        texts = list(result.infotexts) + [None] * (len(result.images) - len(result.infotexts))
        seeds = list(result.seeds) + [-1] * (len(result.images) - len(result.seeds))
        return [
            write_once(image, script_cell_path(self.outputs_dir, self.job, index, i, seeds[i]), texts[i])
            for i, image in enumerate(result.images)
        ]

    def grid(self, image: Image.Image, infotext: str, seed: int) -> Path | None:
        if self.job.runs_again:
            return None
        return write_once(image, script_grid_path(self.outputs_dir, self.job, seed), infotext)
