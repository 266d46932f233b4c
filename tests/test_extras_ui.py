"""The Extras tab and txt2img's Hires. fix accordion, through Gradio's API (the fake service runs the built-in
upscalers for real)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from tests.support.browser import serving  # noqa: E402
from tests.support.fakes import FakeService  # noqa: E402
from webui.ui.hires import hires_from_widgets, size_note  # noqa: E402


@pytest.fixture
def fake_service():
    service = FakeService()
    yield service
    service.close()


@pytest.fixture
def ui_url(fake_service):
    with serving(fake_service) as url:
        yield url


def test_extras_tab_upscales_with_lanczos_as_pil(ui_url, tmp_path):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), "RGB")
    path = tmp_path / "in.png"
    source.save(path)
    client = gradio_client.Client(ui_url, verbose=False)
    gallery, info = client.predict(
        image=gradio_client.handle_file(str(path)),
        files=None,
        resize_mode="Scale by",
        resize=2,
        width=512,
        height=512,
        crop=True,
        upscaler_1="Lanczos",
        upscaler_2="None",
        visibility=0,
        api_name="/extras",
    )
    result = Image.open(gallery[0]["image"]).convert("RGB")
    expected = source.resize((80, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result), np.asarray(expected))
    assert "Postprocess upscaler: Lanczos" in info


def test_hires_widgets_make_the_request_and_say_the_final_size():
    assert hires_from_widgets(False, "Latent", 0, 0.7, 2, 0, 0) is None
    hires = hires_from_widgets(True, "Lanczos", 10.0, 0.5, 1.5, 0.0, 0.0)
    assert hires is not None and (hires.hr_upscaler, hires.hr_second_pass_steps, hires.hr_scale) == ("Lanczos", 10, 1.5)
    assert size_note(2, 0, 0, 512, 512) == "from 512x512 to 1024x1024"
    assert size_note(2, 1024, 768, 512, 512) == "from 512x512 to 1024x768"


def test_txt2img_with_hires_from_the_ui_reaches_the_service(ui_url, fake_service):
    client = gradio_client.Client(ui_url, verbose=False)
    client.predict(
        model_name="tiny",
        prompt="a cat",
        negative_prompt="",
        sampler_name="Euler",
        scheduler="Automatic",
        steps=2,
        cfg_scale=7,
        width=64,
        height=64,
        seed=1,
        n_iter=1,
        batch_size=1,
        enable_hr=True,
        hr_upscaler="Latent (nearest)",
        hr_steps=3,
        hr_denoising=0.4,
        hr_scale=2,
        hr_resize_x=0,
        hr_resize_y=0,
        api_name="/txt2img",
    )
    hires = fake_service.submitted[-1].request.hires
    assert hires is not None
    assert (hires.upscaler_name, hires.steps, hires.denoising_strength, hires.width) == (
        "Latent (nearest)",
        3,
        0.4,
        128,
    )
