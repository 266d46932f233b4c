"""The X/Y/Z plot and "Prompts from file or textbox" through the REST API, on the tiny real model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import webuiapi
from fastapi import FastAPI
from PIL import Image

from tests.support.api import from_b64, serve
from webui.api import mount_api
from webui.pipeline.infotext import parse_infotext
from webui.scripts.grid import MIN_FONT_SIZE
from webui.scripts.xyz_plot import TXT2IMG_AXES
from webui.service import WebUIService

SIZE = 64
SAMPLER, CFG, PROMPT_SR, CHECKPOINT, SEED_AXIS, STEPS_AXIS = (
    TXT2IMG_AXES.index(n) for n in ("Sampler", "CFG Scale", "Prompt S/R", "Checkpoint name", "Seed", "Steps")
)
BASE = {"prompt": "a red cat", "negative_prompt": "dog", "steps": 2, "seed": 42, "width": SIZE, "height": SIZE}


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIService]:
    folder = tmp_path_factory.mktemp("xyz_api")
    entries = "".join(
        f"  - name: {name}\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
        for name in ("tiny", "tiny-b")
    )
    (folder / "models.yaml").write_text("models:\n" + entries)
    service = WebUIService(folder / "models.yaml", outputs_dir=folder / "outputs")
    yield service
    service.close()


@pytest.fixture(scope="module")
def url(service: WebUIService) -> Iterator[str]:
    app = FastAPI()
    mount_api(app, service)
    with serve(app) as base:
        yield base


def post(url: str, path: str = "txt2img", **body) -> httpx.Response:
    return httpx.post(f"{url}/sdapi/v1/{path}", json={**BASE, **body}, timeout=600)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def xyz_args(x_type, x_values, y_type=0, y_values="", *, lone=True, legend=True, x_dropdown=(), margin=0):
    # A1111 1.10: x/y/z type, values, dropdown; legend, lone images, sub grids, keep -1, vary x/y/z, margin, csv
    return [x_type, x_values, list(x_dropdown), y_type, y_values, [], 0, "", [], legend, lone, False, False,
            False, False, False, margin, False]  # fmt: skip


def test_sampler_by_cfg_grid_equals_six_single_generations(url: str, service: WebUIService) -> None:
    samplers, cfgs = ["Euler", "DDIM", "Euler a"], [3.0, 9.0]
    body = post(url, script_name="x/y/z plot", script_args=xyz_args(SAMPLER, "", CFG, "3, 9", x_dropdown=samplers))
    assert body.status_code == 200, body.text
    data = body.json()
    images = [from_b64(i) for i in data["images"]]
    assert len(images) == 1 + 6  # the grid first, then the cells (include_lone_images), as A1111
    grid, cells = images[0], images[1:]
    for i, (cfg, sampler) in enumerate((c, s) for c in cfgs for s in samplers):  # x fastest
        single = from_b64(post(url, sampler_name=sampler, cfg_scale=cfg).json()["images"][0])
        assert np.array_equal(pixels(cells[i]), pixels(single)), (sampler, cfg)
        params = parse_infotext(from_b64(data["images"][1 + i]).info["parameters"])
        assert params["Sampler"] == sampler and float(params["CFG scale"]) == cfg
    # Labelled grid: 3/4 of a cell of row labels on the left, column labels on top; cells where the labels say.
    pad_left = SIZE * 3 // 4
    pad_top = grid.height - 2 * SIZE
    assert grid.width == pad_left + 3 * SIZE and pad_top >= MIN_FONT_SIZE
    for i in range(6):
        col, row = i % 3, i // 3
        box = (pad_left + col * SIZE, pad_top + row * SIZE, pad_left + (col + 1) * SIZE, pad_top + (row + 1) * SIZE)
        assert np.array_equal(pixels(grid.crop(box)), pixels(cells[i]))
    label_band = pixels(grid.crop((pad_left, 0, grid.width, pad_top)))
    assert (label_band < 128).any() and (label_band > 200).mean() > 0.5  # dark text on white
    info = __import__("json").loads(data["info"])
    assert info["infotexts"][0] == info["infotexts"][1]  # the grid carries the first cell's parameters


def test_grid_is_saved_under_txt2img_grids(url: str, service: WebUIService) -> None:
    body = post(url, save_images=True, script_name="x/y/z plot", script_args=xyz_args(STEPS_AXIS, "1-2", lone=False))
    assert body.status_code == 200, body.text
    assert len(body.json()["images"]) == 1
    outputs = service.outputs_dir or Path("/nonexistent")
    grids = list((outputs / "txt2img-grids").rglob("*.png"))
    assert len(grids) == 1 and len(list((outputs / "txt2img").rglob("*.png"))) >= 2
    assert Image.open(grids[0]).size == from_b64(body.json()["images"][0]).size


def test_prompt_search_and_replace(url: str) -> None:
    data = post(url, script_name="x/y/z plot", script_args=xyz_args(PROMPT_SR, "red, blue, 'green'")).json()
    prompts = [parse_infotext(from_b64(i).info["parameters"])["Prompt"] for i in data["images"][1:]]
    assert prompts == ["a red cat", "a blue cat", "a 'green' cat"]
    info = __import__("json").loads(data["info"])
    assert info["all_prompts"] == ["a red cat", *prompts]  # the grid (its first cell's), then each cell's
    quoted = post(url, script_name="x/y/z plot", script_args=xyz_args(PROMPT_SR, 'red, "big, blue"')).json()
    assert parse_infotext(from_b64(quoted["images"][2]).info["parameters"])["Prompt"] == "a big, blue cat"
    missing = post(url, script_name="x/y/z plot", script_args=xyz_args(PROMPT_SR, "purple, red"))
    assert missing.status_code == 422 and "'purple'" in missing.text


def test_checkpoint_axis_loads_each_model_once(url: str, service: WebUIService, monkeypatch) -> None:
    loads: list[str] = []
    real_load = service.models.load

    def counting_load(name=None, *args, **kwargs):
        loads.append(str(name))
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(service.models, "load", counting_load)
    service.unload_model()
    # checkpoints on X (the inner axis by default): A1111 runs the costly axis outermost
    args = xyz_args(CHECKPOINT, "", SEED_AXIS, "1, 2, 3", x_dropdown=["tiny-b", "tiny"])
    data = post(url, script_name="x/y/z plot", script_args=args).json()
    assert len(data["images"]) == 7
    models = [parse_infotext(from_b64(i).info["parameters"])["Model"] for i in data["images"][1:]]
    assert models == ["tiny-b", "tiny"] * 3
    assert len(loads) <= 2 and len(set(loads)) == len(loads), loads


def test_bad_script_requests_are_422(url: str) -> None:
    assert post(url, script_name="nope").status_code == 422
    bad_axis = post(url, script_name="x/y/z plot", script_args=xyz_args(TXT2IMG_AXES.index("VAE"), "x"))
    assert bad_axis.status_code == 422 and "VAE" in bad_axis.text
    bad_value = post(url, script_name="x/y/z plot", script_args=xyz_args(STEPS_AXIS, "2, many"))
    assert bad_value.status_code == 422 and "'many'" in bad_value.text
    unknown_model = post(url, script_name="x/y/z plot", script_args=xyz_args(CHECKPOINT, "nothing-like-it"))
    assert unknown_model.status_code == 422 and "nothing-like-it" in unknown_model.text


def test_scripts_are_listed(url: str) -> None:
    listed = httpx.get(f"{url}/sdapi/v1/scripts").json()
    assert "x/y/z plot" in listed["txt2img"] and "prompts from file or textbox" in listed["img2img"]


def test_webuiapi_xyz_call(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    result = api.txt2img(
        prompt="a red cat", seed=3, width=SIZE, height=SIZE, styles=[], subseed_strength=0.3, subseed=9,
        script_name="x/y/z plot", script_args=xyz_args(CFG, "2-6 [3]"),
    )  # fmt: skip
    assert len(result.images) == 4 and result.images[0].size[0] == 3 * SIZE and result.images[0].size[1] > SIZE
    assert [parse_infotext(t)["CFG scale"] for t in result.info["infotexts"][1:]] == ["2", "4", "6"]
    assert all("Variation seed: 9" in t for t in result.info["infotexts"][1:])


def test_progress_counts_cells_and_interrupt_keeps_done_cells(url: str, service: WebUIService) -> None:
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            state = httpx.get(f"{url}/sdapi/v1/progress").json()
            if state["active"]:
                seen.append(state)
                if state["state"]["job_no"] >= 2:  # third cell running: stop
                    httpx.post(f"{url}/sdapi/v1/interrupt")
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = post(url, steps=6, script_name="x/y/z plot", script_args=xyz_args(SEED_AXIS, "1-8"))
        data = response.json()
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 200, response.text
    info = __import__("json").loads(data["info"])
    assert info["interrupted"]
    kept = [from_b64(i) for i in data["images"][1:]]
    assert len(kept) == 8
    black = [not pixels(im).any() for im in kept]
    assert not black[0] and not black[1] and black[-1]  # cells done kept, the rest left black in the grid
    # A1111's state: job_count = the cells, job_no = the cells done; textinfo and the UI say "cell k/n"
    second = [s for s in seen if s["state"]["job_no"] == 1]
    assert second and all(s["state"]["job_count"] == 8 and s["state"]["job"] == "2 out of 8" for s in second)
    assert all(s["textinfo"].startswith("Step ") and s["textinfo"].endswith(", cell 2/8") for s in second)
    assert not [s["textinfo"] for s in seen if "image" in s["textinfo"] and not s["state"]["interrupted"]]


def test_ui_status_line_counts_cells_during_a_grid(service: WebUIService) -> None:
    from webui.pipeline.requests import GenerationRequest
    from webui.scripts import plan_script
    from webui.ui.jobs import JobTracker

    base = GenerationRequest(prompt="a red cat", steps=6, seed=1, width=SIZE, height=SIZE)
    plan = plan_script("x/y/z plot", xyz_args(SEED_AXIS, "1-4"), base, "tiny", lambda name: name)
    tracker = JobTracker(service, poll_interval=0.005)
    lines = [u.html for u in tracker.follow(replace(base, script=plan), "tiny", None) if u.result is None]
    shown = {k for k in range(1, 5) if any(f"cell {k}/4" in line for line in lines)}
    assert len(shown) >= 2 and not any("image" in line for line in lines), lines
    assert any("Step " in line and "cell " in line for line in lines)


def test_prompts_from_textbox_give_each_line_its_settings(url: str) -> None:
    text = "\n".join(
        [
            "a green cat",
            '--prompt "a blue dog" --steps 3 --cfg_scale 5 --seed 11',
            "",
            '--prompt "x" --negative_prompt "y z" --sampler_name "DDIM" --seed 12',
            "--prompt 'w' --width 96 --height 80 --seed 13",
            '--prompt "v" --sampler_name "Euler a" --scheduler karras --seed 14 --subseed 3 --subseed_strength 0.2',
        ]
    )
    data = post(url, prompt="", negative_prompt="", script_name="prompts from file or textbox",
                script_args=[False, False, "start", text]).json()  # fmt: skip
    assert "info" in data, data
    info = __import__("json").loads(data["info"])
    params = [parse_infotext(t) for t in info["infotexts"]]
    # A1111's info lists each line's own prompt, negative prompt, seed and variation seed
    assert info["all_prompts"] == ["a green cat", "a blue dog", "x", "w", "v"]
    assert info["all_negative_prompts"] == ["", "", "y z", "", ""]
    assert info["all_seeds"] == [42, 11, 12, 13, 14] and info["all_subseeds"] == [-1, -1, -1, -1, 3]
    assert len(data["images"]) == len(params) == 5
    assert [p["Prompt"] for p in params] == ["a green cat", "a blue dog", "x", "w", "v"]
    assert params[0]["Seed"] == "42" and params[1]["Steps"] == "3" and params[1]["CFG scale"] == "5"
    assert params[2]["Sampler"] == "DDIM" and params[2]["Negative prompt"] == "y z"
    assert (params[3]["Size-1"], params[3]["Size-2"]) == ("96", "80") and from_b64(data["images"][3]).size == (96, 80)
    assert params[4]["Sampler"] == "Euler a" and params[4]["Schedule type"] == "Karras"
    bad = post(url, script_name="prompts from file or textbox", script_args=[False, False, "start", "ok\n--stepz 3"])
    assert bad.status_code == 422 and "line 2" in bad.text and "--stepz" in bad.text
