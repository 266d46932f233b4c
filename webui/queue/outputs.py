"""Image files of queued jobs: image ``i`` of a job has one name, so a job that runs again after a crash
writes the same files, never a second copy.

``<outputs>/<txt2img|img2img>/<YYYY-MM-DD>/<HHMMSS>-<job id[:8]>-<i>-<seed>.png``, the date and time being
when the job was submitted (so the files of a job sort in submission order and stay in one day's folder
whenever it runs). A file is written as ``<name>.part``, flushed to disk and renamed: a reader (or a crash)
sees a complete PNG or none, and the ``.part`` of a killed run is overwritten by the next one.
"""

from __future__ import annotations

import datetime as dt
import os
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
    """Write every image of ``result`` under its job's names; returns the paths in image order."""
    texts = list(result.infotexts) + [None] * (len(result.images) - len(result.infotexts))
    seeds = list(result.seeds) + [-1] * (len(result.images) - len(result.seeds))
    return [
        write_once(image, job_image_path(outputs_dir, job, i, seeds[i]), texts[i])
        for i, image in enumerate(result.images)
    ]
