"""The X/Y/Z plot and the styles/variation controls in a real Chromium, on a real service with the tiny model."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import chromium_page, pick, serving, set_number
from webui.pipeline.infotext import parse_infotext
from webui.service import WebUIService

SIZE = 64


@pytest.fixture
def server(tiny_checkpoint, tmp_path: Path) -> Iterator[tuple[WebUIService, str]]:
    (tmp_path / "models.yaml").write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
        "    default: true\n"
    )
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\n')
    service = WebUIService(tmp_path / "models.yaml", outputs_dir=tmp_path / "outputs")
    try:
        with serving(service) as url:
            yield service, url
    finally:
        service.close()


@pytest.fixture
def page():
    with chromium_page(height=1400) as opened:  # tall enough for the whole plot in the screenshot
        yield opened


@pytest.mark.browser
def test_browser_runs_a_small_plot_with_a_style_and_reads_the_grid(server, page, screenshots_dir: Path) -> None:
    service, url = server
    page.goto(url)
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    pick(page, "txt2img_styles", "ink")
    set_number(page, "txt2img_steps", 2)
    set_number(page, "txt2img_seed", 5)
    pick(page, "txt2img_script", "X/Y/Z plot")
    pick(page, "txt2img_xyz_x_type", "Steps")
    page.locator("#txt2img_xyz_x_values textarea, #txt2img_xyz_x_values input").first.fill("1, 2, 3")
    page.locator("#txt2img_xyz_x_values textarea, #txt2img_xyz_x_values input").first.press("Tab")
    pick(page, "txt2img_xyz_y_type", "CFG Scale")
    page.locator("#txt2img_xyz_y_values textarea, #txt2img_xyz_y_values input").first.fill("3, 7")
    page.locator("#txt2img_xyz_y_values textarea, #txt2img_xyz_y_values input").first.press("Tab")
    page.wait_for_timeout(300)
    # Record every status line the page shows while the grid runs (a cell of the tiny model takes milliseconds).
    page.evaluate(
        """() => {
          window.seenProgress = [];
          const box = document.getElementById("txt2img_progress");
          new MutationObserver(() => window.seenProgress.push(box.innerText))
            .observe(box, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=120_000)
    lines = page.evaluate("window.seenProgress")
    cells = [line for line in lines if re.search(r"Step \d+/12 · cell [1-6]/6", line)]
    running = [line for line in lines if line.startswith("Step ")]
    assert cells and not [line for line in running if "image " in line], lines  # "cell k/n" and the step
    info = page.locator("#txt2img_info textarea")
    page.wait_for_function("el => el.value.includes('Steps:')", arg=info.element_handle(), timeout=30_000)
    params = parse_infotext(info.input_value())
    assert params["Prompt"] == "a red circle, ink drawing" and params["Negative prompt"] == "blurry"
    src = page.locator("#txt2img_gallery img:visible").first.get_attribute("src")
    grid = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    pad_left = SIZE * 3 // 4
    assert grid.width == pad_left + 3 * SIZE and grid.height > 2 * SIZE  # 3 steps x 2 CFG scales, labelled
    saved = list((Path(service.outputs_dir or "") / "txt2img-grids").rglob("*.png"))
    assert len(saved) == 1 and np.array_equal(np.asarray(Image.open(saved[0]).convert("RGB")), np.asarray(grid))
    page.screenshot(path=str(screenshots_dir / "xyz-plot.png"))


def number_of(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").first.input_value())


@pytest.mark.browser
def test_browser_reuse_and_png_info_fill_the_variation_seeds(server, page, tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    service, url = server
    page.goto(url)
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 2)
    set_number(page, "txt2img_seed", 5)
    page.locator("#txt2img_subseed_show input").check()
    set_number(page, "txt2img_subseed", 500)
    set_number(page, "txt2img_subseed_strength", 0.5)
    page.wait_for_timeout(300)
    page.locator("#txt2img_generate").click()
    info = page.locator("#txt2img_info textarea")
    page.wait_for_function("el => el.value.includes('Variation seed')", arg=info.element_handle(), timeout=120_000)
    assert parse_infotext(info.input_value())["Variation seed"] == "500"
    # Random, a new variation seed and Extra closed; Reuse brings back both seeds of the image and opens Extra
    page.locator("#txt2img_random_seed").click()
    set_number(page, "txt2img_subseed", 77)
    page.locator("#txt2img_subseed_show input").uncheck()
    page.locator("#txt2img_reuse_seed").click()
    page.wait_for_function(
        "el => el.value === '500'", arg=page.locator("#txt2img_subseed input").first.element_handle()
    )
    assert number_of(page, "txt2img_seed") == 5 and page.locator("#txt2img_subseed_show input").is_checked()

    # PNG Info -> Send to img2img: Extra opened, the variation fields filled from the infotext
    meta = PngInfo()
    meta.add_text(
        "parameters",
        "a star\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x64, Variation seed: 501, "
        "Variation seed strength: 0.25, Seed resize from: 96x80",
    )
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "made.png", pnginfo=meta)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "made.png"))
    parameters = page.locator("#pnginfo_parameters textarea").element_handle()
    page.wait_for_function("el => el.value.includes('Variation seed: 501')", arg=parameters)
    page.locator("#pnginfo_send_to_img2img").click()
    page.wait_for_function(
        "el => el.value === '501'", arg=page.locator("#img2img_subseed input").first.element_handle()
    )
    assert page.locator("#img2img_subseed_show input").is_checked()
    assert page.locator("#img2img_subseed").is_visible()  # the Extra group opened with the checkbox
    sent = [number_of(page, f"img2img_{name}") for name in ("subseed_strength", "seed_resize_w", "seed_resize_h")]
    assert sent == [0.25, 96, 80]
