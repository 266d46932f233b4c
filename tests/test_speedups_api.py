"""Token merging and DeepCache through the A1111 API (issue 19): override_settings, /options, the infotext."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api import from_b64, serve
from webui.api import mount_api
from webui.service import WebUIService

SIZE = 128


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIService]:
    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=tmp_path_factory.mktemp("speedups_api"))
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service: WebUIService) -> Iterator[httpx.Client]:
    app = FastAPI()
    mount_api(app, service)
    with serve(app) as base, httpx.Client(base_url=base + "/sdapi/v1", timeout=120) as client:
        yield client


def txt2img(client: httpx.Client, **extra) -> tuple[bytes, str]:
    body = {"prompt": "a cat", "seed": 3, "steps": 3, "sampler_name": "DDIM", "width": SIZE, "height": SIZE, **extra}
    response = client.post("/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    return from_b64(response.json()["images"][0]).tobytes(), info["infotexts"][0]


def test_override_settings_reach_the_unet_and_the_infotext(client):
    exact, exact_info = txt2img(client)
    merged, info = txt2img(client, override_settings={"token_merging_ratio": 0.5, "deepcache_interval": 2})
    assert "Token merging ratio: 0.5" in info and "DeepCache interval: 2, DeepCache branch: 0" in info
    assert "merging" not in exact_info and "DeepCache" not in exact_info
    assert merged != exact
    again, _ = txt2img(client)
    assert again == exact


def test_options_set_the_app_default_and_a_request_overrides_it(client):
    assert client.get("/options").json()["token_merging_ratio"] == 0.0
    assert client.post("/options", json={"token_merging_ratio": 0.3, "deepcache_interval": 3}).status_code == 200
    try:
        options = client.get("/options").json()
        assert (options["token_merging_ratio"], options["deepcache_interval"]) == (0.3, 3)
        _, info = txt2img(client)
        assert "Token merging ratio: 0.3" in info and "DeepCache interval: 3" in info
        _, off = txt2img(client, override_settings={"token_merging_ratio": 0, "deepcache_interval": 1})
        assert "merging" not in off and "DeepCache" not in off
    finally:
        client.post("/options", json={"token_merging_ratio": 0.0, "deepcache_interval": 1})


def test_bad_values_are_422_naming_them(client):
    response = client.post("/txt2img", json={"prompt": "x", "override_settings": {"token_merging_ratio": 0.9}})
    assert response.status_code == 422 and "token_merging_ratio" in response.text
    response = client.post("/options", json={"deepcache_interval": 0})
    assert response.status_code == 422 and "deepcache_interval" in response.text
    assert client.get("/options").json()["deepcache_interval"] == 1
