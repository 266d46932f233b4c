"""Hires. fix and the Extras tab in a real Chromium, on a real service with the bundled demo model (64x64).

``--update-screenshots`` writes the README's ``docs/screenshots/hires-fix.png`` and ``extras.png``.
Run: ``OMP_NUM_THREADS=1 pytest tests/test_hires_browser.py -m browser -q``
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.support.browser import pick, serving, set_number, wait_text
from tests.test_browser import demo_models_yaml
from webui.pipeline.infotext import parse_infotext
from webui.service import WebUIService


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[WebUIService, str]]:
    models_yaml = demo_models_yaml(tmp_path)
    if models_yaml is None:
        pytest.skip("the bundled demo model is not in this checkout")
    service = WebUIService(models_yaml, outputs_dir=tmp_path / "outputs")
    try:
        with serving(service) as url:
            yield service, url
    finally:
        service.close()


def fetch_image(page, selector: str) -> Image.Image:
    src = page.locator(f"{selector} img:visible").first.get_attribute("src")
    answer = page.request.get(src)
    assert answer.ok, src
    return Image.open(io.BytesIO(answer.body())).convert("RGB")


def open_hires(page) -> None:
    page.locator("#txt2img_hires_fix").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_enable_hr input").wait_for(state="visible", timeout=10_000)


@pytest.mark.browser
def test_hires_fix_accordion_generates_the_larger_image(server, page, screenshots_dir: Path) -> None:
    service, url = server
    page.goto(url)
    page.locator("#txt2img_prompt textarea").fill("a white star on a red background")
    set_number(page, "txt2img_steps", 6)
    set_number(page, "txt2img_seed", 5)
    open_hires(page)
    page.locator("#txt2img_enable_hr input").check()
    pick(page, "txt2img_hr_upscaler", "Lanczos")
    set_number(page, "txt2img_hires_steps", 4)
    set_number(page, "txt2img_denoising_strength", 0.5)
    set_number(page, "txt2img_hr_scale", 1.5)
    wait_text(page, "#txt2img_hires_size", "from 64x64 to 96x96")
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=180_000)
    wait_text(page, "#txt2img_info textarea", "Hires upscaler", timeout=60_000)
    params = parse_infotext(page.locator("#txt2img_info textarea").input_value())
    assert (params["Size-1"], params["Size-2"]) == (
        "64",
        "64",
    )  # A1111 writes the first pass's size; the image is the hires one
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == ("1.5", "4", "Lanczos")
    assert params["Denoising strength"] == "0.5"
    shown = fetch_image(page, "#txt2img_gallery")
    assert shown.size == (96, 96)
    assert np.asarray(shown, dtype=np.float32).std() > 2.0  # a drawing, not a blank
    saved = list((Path(service.outputs_dir or "") / "txt2img").rglob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (96, 96)
    page.locator("#txt2img_sampler").evaluate("el => el.scrollIntoView({block: 'start'})")  # settings + result
    page.screenshot(path=str(screenshots_dir / "hires-fix.png"))


def png_with_infotext(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, pnginfo=info)
    return path


@pytest.mark.browser
def test_png_info_send_to_txt2img_fills_and_opens_the_hires_accordion(server, page, tmp_path: Path) -> None:
    _, url = server
    hires = png_with_infotext(
        tmp_path / "hires.png",
        "a white star on a red background\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 5, Size: 64x64, "
        "Denoising strength: 0.45, Hires upscale: 1.75, Hires steps: 3, Hires upscaler: Latent (nearest)",
    )
    plain = png_with_infotext(
        tmp_path / "plain.png", "a green circle\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 7, Size: 64x64"
    )
    page.goto(url)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(hires))
    wait_text(page, "#pnginfo_parameters textarea", "Hires upscaler")
    page.locator("#pnginfo_send_to_txt2img").click()
    wait_text(page, "#txt2img_prompt textarea", "a white star")
    enable = page.locator("#txt2img_enable_hr input")
    enable.wait_for(state="visible", timeout=10_000)  # the accordion opened by itself
    page.wait_for_function("el => el.checked", arg=enable.element_handle(), timeout=10_000)
    assert page.locator("#txt2img_hr_upscaler input").first.input_value() == "Latent (nearest)"
    values = {
        name: float(page.locator(f"#txt2img_{name} input[type=number]").first.input_value())
        for name in ("hires_steps", "denoising_strength", "hr_scale", "hr_resize_x", "hr_resize_y")
    }
    assert values == {
        "hires_steps": 3,
        "denoising_strength": 0.45,
        "hr_scale": 1.75,
        "hr_resize_x": 0,
        "hr_resize_y": 0,
    }
    wait_text(page, "#txt2img_hires_size", "from 64x64 to 112x112")

    # An infotext without hires fix turns it off again, as A1111's paste does.
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(plain))
    wait_text(page, "#pnginfo_parameters textarea", "a green circle")
    page.locator("#pnginfo_send_to_txt2img").click()
    wait_text(page, "#txt2img_prompt textarea", "a green circle")
    page.wait_for_function("el => !el.checked", arg=enable.element_handle(), timeout=10_000)


@pytest.mark.browser
def test_extras_tab_upscales_an_upload_with_lanczos_and_saves_it(server, page, tmp_path, screenshots_dir) -> None:
    service, url = server
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "RGB")
    source = small.resize((48, 40), Image.Resampling.BICUBIC)  # some structure, so Lanczos has work to do
    source.save(tmp_path / "source.png")
    page.goto(url)
    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_image input[type=file]").set_input_files(str(tmp_path / "source.png"))
    page.locator("#extras_image img:visible").first.wait_for(timeout=30_000)
    set_number(page, "extras_upscaling_resize", 2)
    page.locator("#extras_generate").click()
    page.locator("#extras_gallery img:visible").first.wait_for(timeout=60_000)
    wait_text(page, "#extras_info textarea", "Postprocess upscaler: Lanczos")
    expected = np.asarray(source.resize((96, 80), Image.Resampling.LANCZOS))
    shown = fetch_image(page, "#extras_gallery")
    assert np.array_equal(np.asarray(shown), expected)
    saved = list((Path(service.outputs_dir or "") / "extras").glob("*/*.png"))
    assert len(saved) == 1 and saved[0].parent.name.count("-") == 2  # outputs/extras/<YYYY-MM-DD>/
    assert saved[0].name == "00000.png"  # A1111 names Extras results by the counter alone
    with Image.open(saved[0]) as on_disk:
        assert np.array_equal(np.asarray(on_disk.convert("RGB")), expected)
        assert "Postprocess upscaler: Lanczos" in on_disk.info["parameters"]
    page.locator("#extras_image").evaluate("el => el.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(screenshots_dir / "extras.png"))
