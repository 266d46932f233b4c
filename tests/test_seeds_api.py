"""Variation seeds through the REST API, driven by the ``webuiapi`` client as A1111 users would."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import webuiapi
from fastapi import FastAPI

from tests.support.api import serve
from webui.api import mount_api
from webui.service import WebUIService

SIZE = 64


@pytest.fixture(scope="module")
def url(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("seeds_api")
    (folder / "models.yaml").write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
    )
    service = WebUIService(folder / "models.yaml", outputs_dir=folder / "outputs")
    app = FastAPI()
    mount_api(app, service)
    try:
        with serve(app) as base:
            yield base
    finally:
        service.close()


@pytest.fixture(scope="module")
def api(url: str) -> webuiapi.WebUIApi:
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_webuiapi_subseed_strength_gives_variations_of_one_seed(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(
        prompt="a cat", width=SIZE, height=SIZE, seed=10, subseed=500, subseed_strength=0.5, batch_size=2
    )
    info = result.info
    assert info["all_seeds"] == [10, 10] and info["all_subseeds"] == [500, 501]
    assert info["subseed_strength"] == 0.5
    assert "Variation seed: 501, Variation seed strength: 0.5" in info["infotexts"][1]
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).max() > 0
    # strength 1 is the subseed's own image; strength 0 the seed's
    full = api.txt2img(prompt="a cat", width=SIZE, height=SIZE, seed=10, subseed=500, subseed_strength=1.0)
    alone = api.txt2img(prompt="a cat", width=SIZE, height=SIZE, seed=500)
    assert np.abs(pixels(full.image) - pixels(alone.image)).max() <= 1
    plain = api.txt2img(prompt="a cat", width=SIZE, height=SIZE, seed=10, subseed=500, subseed_strength=0.0)
    assert "Variation seed" not in plain.info["infotexts"][0] and plain.info["all_subseeds"] == [-1]
    # subseed -1 is drawn once per job
    resize = {"seed_resize_from_w": 48, "seed_resize_from_h": 32}
    resized = api.txt2img(prompt="a cat", width=SIZE, height=SIZE, seed=10, subseed=-1, subseed_strength=0.2, **resize)
    assert resized.info["subseed"] >= 0
    assert f"Variation seed: {resized.info['subseed']}" in resized.info["infotexts"][0]
    assert "Seed resize from: 48x32" in resized.info["infotexts"][0]


def test_png_info_splits_variation_keys(url: str) -> None:
    body = {"prompt": "a cat", "steps": 2, "seed": 3, "subseed": 4, "subseed_strength": 0.25}
    body |= {"seed_resize_from_w": 48, "seed_resize_from_h": 32, "sampler_name": "Euler"}
    image = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=600).json()["images"][0]
    parsed = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": image}).json()["parameters"]
    assert parsed["Variation seed"] == "4" and parsed["Variation seed strength"] == "0.25"
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("48", "32")


@pytest.mark.parametrize(("field", "value"), [("subseed_strength", 1.5), ("subseed", -2), ("seed_resize_from_w", 4000)])
def test_bad_variation_fields_are_422_naming_the_field(url: str, field: str, value: float) -> None:
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, field: value})
    assert response.status_code == 422 and field in response.text
