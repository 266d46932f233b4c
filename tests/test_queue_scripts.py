"""Scripts on the durable queue: an X/Y/Z plot cut short by a restart runs again from its first cell and writes
each cell and its grid once, by name (A1111's counter names would save the finished cells a second time), and
keeps no image of the cell that was cut."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from webui.jobs import JobState
from webui.pipeline import GenerationRequest
from webui.scripts import plan_script
from webui.scripts.xyz_plot import TXT2IMG_AXES
from webui.service import WebUIService

TIMEOUT = 300
STEPS_AXIS = TXT2IMG_AXES.index("Steps")


def test_a_grid_cut_by_a_restart_runs_again_without_duplicating_its_cells(tiny_checkpoint, tmp_path: Path):
    outputs, db = tmp_path / "outputs", tmp_path / "q.sqlite3"
    base = GenerationRequest(prompt="a cat", seed=3, sampler_name="Euler", width=128, height=128)
    args = [STEPS_AXIS, "2, 150", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    grid = replace(base, script=plan_script("x/y/z plot", args, base, None, lambda name: name))
    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=outputs, queue_db=db)
    try:
        job = service.submit(grid)
        deadline = time.monotonic() + TIMEOUT
        while not (job.progress is not None and job.progress.image_index == 1 and job.progress.sampling_step >= 5):
            assert time.monotonic() < deadline and not job.done, "the second cell never ran"
            time.sleep(0.01)
    finally:
        service.close()  # the app stops while cell 2 of 2 runs: the job stays pending
    first_run = sorted(p.name for p in outputs.rglob("*.png"))
    assert len(first_run) == 1 and f"-{job.id[:8]}-c0-0-3.png" in first_run[0]  # only the finished cell
    again = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=outputs, queue_db=db)
    try:
        restored = again.get_job(job.id)
        result = restored.result(TIMEOUT)
        assert restored.state == JobState.DONE and not result.interrupted
        row = again.queue.store.get(job.id)
        assert row is not None and row.attempts == 2
    finally:
        again.close()
    cells = sorted((outputs / "txt2img").rglob("*.png"))
    grids = list((outputs / "txt2img-grids").rglob("*.png"))
    assert [p.name.split("-")[2] for p in cells] == ["c0", "c1"] and len(grids) == 1  # each once
    assert not [p for p in outputs.rglob("*") if p.name.endswith(".part")]
    with Image.open(cells[1]) as image:
        assert "Steps: 150" in image.info["parameters"] and "Interrupted" not in image.info["parameters"]
    assert result.paths == grids
    assert Image.open(grids[0]).size == (2 * 128, Image.open(grids[0]).size[1])
