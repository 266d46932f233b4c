"""The upscaler routes and hires fix over HTTP, driven by the ``webuiapi`` client (as A1111 users would) and raw
HTTP, against the real service with the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import webuiapi
from fastapi import FastAPI
from PIL import Image

from tests.support.api import b64_png, from_b64, serve
from webui.api import mount_api
from webui.pipeline.hires import LATENT_UPSCALE_MODES
from webui.pipeline.infotext import parse_infotext
from webui.pipeline.outputs import read_infotext
from webui.service import WebUIService

SIZE = 64


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIService]:
    folder = tmp_path_factory.mktemp("extras_service")
    models_yaml = folder / "models.yaml"
    models_yaml.write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
        "    default: true\n"
    )
    upscalers = folder / "ESRGAN"
    upscalers.mkdir()
    (upscalers / "4x-NotAModel.pth").write_bytes(b"not a model")
    service = WebUIService(models_yaml, outputs_dir=folder / "outputs", upscaler_dir=upscalers)
    yield service
    service.close()


@pytest.fixture(scope="module")
def url(service: WebUIService) -> Iterator[str]:
    app = FastAPI()
    mount_api(app, service)
    with serve(app) as base:
        yield base


@pytest.fixture(scope="module")
def api(url: str) -> webuiapi.WebUIApi:
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_webuiapi_lists_upscalers_and_latent_modes(api: webuiapi.WebUIApi) -> None:
    upscalers = api.get_upscalers()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest", "4x-NotAModel"]
    model = upscalers[3]
    assert model["model_name"] == "4x-NotAModel" and model["model_path"].endswith("4x-NotAModel.pth")
    assert model["scale"] == 4 and upscalers[1]["scale"] is None
    assert [m["name"] for m in api.get_latent_upscale_modes()] == list(LATENT_UPSCALE_MODES)


def test_webuiapi_extra_single_image_with_lanczos_equals_pil(api: webuiapi.WebUIApi) -> None:
    image = noise_image(40, 24)
    result = api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (80, 48)
    assert np.array_equal(pixels(result.image), pixels(image.resize((80, 48), Image.Resampling.LANCZOS)))
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in result.info


def test_webuiapi_extra_single_image_blends_upscaler_2(api: webuiapi.WebUIApi) -> None:
    image = noise_image(20, 20, 1)
    result = api.extra_single_image(
        image, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5, upscaling_resize=3
    )
    # 20 px x3 = 60, down to a multiple of 8 as A1111's Upscaler.upscale: 56
    a = image.resize((56, 56), Image.Resampling.LANCZOS)
    b = image.resize((56, 56), Image.Resampling.NEAREST)
    assert np.array_equal(pixels(result.image), pixels(Image.blend(a, b, 0.5)))
    assert "Postprocess upscaler 2: Nearest" in result.info


def test_webuiapi_extra_batch_images_resize_to_with_crop(api: webuiapi.WebUIApi) -> None:
    images = [noise_image(40, 20, 2), noise_image(30, 30, 3)]
    result = api.extra_batch_images(
        images, resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=48, upscaling_crop=True, upscaler_1="Nearest"
    )
    assert [im.size for im in result.images] == [(64, 48), (64, 48)]
    # 40x20 scaled to cover 64x48: x2.4 -> 96x48, centre cropped to 64x48
    expected = images[0].resize((96, 48), Image.Resampling.NEAREST).crop((16, 0, 80, 48))
    assert np.array_equal(pixels(result.images[0]), pixels(expected))
    text = read_infotext(result.images[0])
    assert text is not None and "Postprocess crop to: 64x48" in text


def test_extras_keep_the_source_parameters_readable(url: str) -> None:
    from webui.api.images import encode_png

    source = encode_png(noise_image(16, 16), "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 16x16")
    body = httpx.post(
        f"{url}/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "Nearest"}, timeout=60
    ).json()
    params = parse_infotext(read_infotext(from_b64(body["image"])) or "")
    assert params["Seed"] == "5" and params["Prompt"] == "a cat"
    assert params["Postprocess upscaler"] == "Nearest"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"upscaler_1": "Bogus"}, "upscaler_1", "available: None, Lanczos, Nearest, 4x-NotAModel"),
        ({"upscaling_resize": 200}, "upscaling_resize", ""),
        ({"resize_mode": 1, "upscaling_resize_w": 5000, "upscaling_resize_h": 64}, "upscaling_resize_w", "4096"),
        ({"upscaling_resize": 16}, "upscaling_resize", "4096 px a side"),  # 300x300 x16 = 4800 px a side
        ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", ""),
    ],
)
def test_bad_extras_input_is_a_422_naming_the_field(url: str, body: dict, field: str, words: str) -> None:
    image = b64_png(noise_image(300, 300) if "upscaling_resize" in body else noise_image(16, 16))
    response = httpx.post(f"{url}/sdapi/v1/extra-single-image", json={"image": image, **body}, timeout=60)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == field
    assert words in detail["msg"]


def test_a_model_upscaler_file_that_cannot_run_is_a_422_naming_it(url: str) -> None:
    """Without spandrel: the install hint; with it: the file spandrel cannot identify (a 500 would be a bug)."""
    image = b64_png(noise_image(16, 16))
    response = httpx.post(
        f"{url}/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "4x-NotAModel"}, timeout=60
    )
    assert response.status_code == 422
    assert "pip install 'sd-webui[upscalers]'" in response.text or "4x-NotAModel.pth" in response.text


def test_webuiapi_txt2img_with_enable_hr(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(
        prompt="the cat",
        seed=7,
        width=SIZE,
        height=SIZE,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent (bicubic)",
        hr_second_pass_steps=2,
        denoising_strength=0.5,
    )
    assert result.image.size == (2 * SIZE, 2 * SIZE)
    params = parse_infotext(result.info["infotexts"][0])
    assert params["Hires upscaler"] == "Latent (bicubic)" and params["Hires upscale"] == "2"
    assert params["Hires steps"] == "2" and params["Denoising strength"] == "0.5"


def test_txt2img_hires_errors_are_422s(url: str) -> None:
    for body, field in (
        ({"enable_hr": True, "hr_upscaler": "Bogus"}, "hr_upscaler"),
        ({"enable_hr": True, "hr_scale": 40}, "hr_scale"),
        ({"enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
        ({"enable_hr": True, "hr_resize_x": 4096}, "hr_resize_x"),
    ):
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": 2, **body}, timeout=60)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["loc"][-1] == field


def test_txt2img_without_enable_hr_ignores_the_hires_fields(url: str) -> None:
    body = {"steps": 2, "seed": 3, "hr_scale": 2, "hr_upscaler": "Lanczos", "denoising_strength": 0.3}
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert from_b64(response.json()["images"][0]).size == (SIZE, SIZE)
    assert "Hires" not in info["infotexts"][0]
