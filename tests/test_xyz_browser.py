"""The X/Y/Z plot and the styles/variation controls in a real Chromium, on a real service with the tiny model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS
from webui.pipeline.infotext import parse_infotext
from webui.service import WebUIService
from webui.ui import CSS, JS, build_ui

SIZE = 64


@pytest.fixture
def server(tiny_checkpoint, tmp_path: Path) -> Iterator[tuple[WebUIService, str]]:
    (tmp_path / "models.yaml").write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
        "    default: true\n"
    )
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\n')
    service = WebUIService(tmp_path / "models.yaml", outputs_dir=tmp_path / "outputs")
    demo = build_ui(service, poll_interval=0.02)
    _, url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, ssr_mode=False, server_name="127.0.0.1", css=CSS, js=JS
    )
    try:
        yield service, url
    finally:
        demo.close(verbose=False)
        service.close()


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1400})
        finally:
            browser.close()


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


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
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=120_000)
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
