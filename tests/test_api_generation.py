"""The REST API end to end: a real ``WebUIService`` with the tiny random-weight model, served by uvicorn on a
loopback port, driven by the ``webuiapi`` client from PyPI (as existing A1111 users would) and by raw HTTP.

Images are 64x64 (8x8 latents) with 2-3 steps, so one generation takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import webuiapi
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from PIL import Image

from tests.support.api import b64_png, from_b64, serve
from webui.api import ApiLimits, mount_api
from webui.pipeline.requests import GenerationRequest
from webui.service import WebUIService

SIZE = 64
USER, PASSWORD = "api-user", "api-pass"


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIService]:
    """Two registry entries over the tiny checkpoint, so that switching models can be seen."""
    folder = tmp_path_factory.mktemp("api_service")
    models_yaml = folder / "models.yaml"
    entries = "".join(
        f"  - name: {name}\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n{extra}"
        for name, extra in (("tiny", "    default: true\n"), ("tiny-b", ""))
    )
    models_yaml.write_text("models:\n" + entries)
    service = WebUIService(models_yaml, outputs_dir=folder / "outputs")
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
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_webuiapi_txt2img_gives_seeded_reproducible_images(api: webuiapi.WebUIApi, service: WebUIService) -> None:
    result = api.txt2img(prompt="a cat", negative_prompt="dog", seed=1234, batch_size=2, width=SIZE, height=SIZE)
    assert [im.size for im in result.images] == [(SIZE, SIZE)] * 2
    assert result.info["seed"] == 1234 and result.info["all_seeds"] == [1234, 1235]
    assert "Seed: 1235" in result.info["infotexts"][1] and "Negative prompt: dog" in result.info["infotexts"][1]
    assert result.images[1].info["parameters"] == result.info["infotexts"][1]
    assert result.parameters["prompt"] == "a cat"
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).max() > 0  # two different seeds
    again = api.txt2img(prompt="a cat", negative_prompt="dog", seed=1235, width=SIZE, height=SIZE)
    # Batch item i is the image of seed + i (up to float rounding between batch sizes).
    assert np.abs(pixels(again.images[0]) - pixels(result.images[1])).max() <= 2
    assert not list((service.outputs_dir or Path("/nonexistent")).rglob("*.png"))  # save_images defaults to False


def test_webuiapi_lists_samplers_and_models_and_switches_the_model(
    api: webuiapi.WebUIApi, service: WebUIService
) -> None:
    samplers = api.get_samplers()
    assert {"Euler", "Euler a", "DDIM"} <= {s["name"] for s in samplers}
    models = api.get_sd_models()
    assert [m["title"] for m in models] == ["tiny", "tiny-b"]
    assert models[0]["sha256"] and models[0]["hash"] == models[0]["sha256"][:10]
    api.util_set_model("tiny-b")  # lowercases and matches titles, then POSTs sd_model_checkpoint
    assert api.util_get_current_model() == "tiny-b"
    assert service.models.current_name == "tiny-b"
    result = api.txt2img(prompt="x", seed=1, width=SIZE, height=SIZE)
    assert "Model: tiny-b" in result.info["infotexts"][0]
    api.set_options({"sd_model_checkpoint": "tiny"})
    assert api.get_options()["sd_model_checkpoint"] == "tiny"


def test_webuiapi_img2img_and_inpainting_keep_the_unmasked_part(api: webuiapi.WebUIApi) -> None:
    init = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    result = api.img2img(images=[init], prompt="x", seed=3, denoising_strength=0.5, width=SIZE, height=SIZE)
    assert result.images[0].size == (SIZE, SIZE) and result.info["all_seeds"] == [3]
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))  # repaint the left half only
    painted = api.img2img(
        images=[init],
        mask_image=mask,
        mask_blur=0,
        inpainting_fill=1,
        prompt="x",
        seed=3,
        denoising_strength=1.0,
        width=SIZE,
        height=SIZE,
    )
    out = pixels(painted.images[0])
    right, left = out[:, SIZE // 2 + 4 :], out[:, : SIZE // 2 - 4]
    assert np.abs(right - np.array([200, 30, 30])).max() <= 2  # outside the mask: the init image
    assert np.abs(left - np.array([200, 30, 30])).mean() > 10  # inside: repainted


def test_webuiapi_png_info_reads_what_txt2img_wrote(api: webuiapi.WebUIApi) -> None:
    image = api.txt2img(prompt="a (red:1.2) dog", seed=77, width=SIZE, height=SIZE, cfg_scale=5).images[0]
    info = api.png_info(image)
    assert info.parameters["Prompt"] == "a (red:1.2) dog"
    assert (info.parameters["Seed"], info.parameters["CFG scale"], info.parameters["Size-1"]) == ("77", "5", "64")


def _post(base: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=120, **kwargs)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


LONG_JOB = {"prompt": "long", "steps": 150, "batch_size": 4, "n_iter": 50, "width": SIZE, "height": SIZE}


def _task_progress(base: str, task: str) -> dict:
    """``/progress?id_task=`` for ``task``; {} while the server does not know it yet (404)."""
    response = httpx.get(f"{base}/sdapi/v1/progress", params={"id_task": task})
    return response.json() if response.status_code == 200 else {}


def test_interrupt_stops_the_running_job_and_the_queue_goes_on(
    url: str, api: webuiapi.WebUIApi, service: WebUIService
) -> None:
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(_post, url, {**LONG_JOB, "force_task_id": "task(long)"})
        try:
            _wait_for(lambda: _task_progress(url, "task(long)").get("active"))
            _wait_for(lambda: _task_progress(url, "task(long)")["state"]["sampling_step"] > 0)
            progress = httpx.get(f"{url}/sdapi/v1/progress").json()
            assert progress["id_task"] == "task(long)" and progress["state"]["job_count"] >= 1
            assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
            assert from_b64(progress["current_image"]).size[0] > 0  # the live preview
            started = time.monotonic()
            assert api.interrupt() == {}
            response = long.result(timeout=60)
        finally:
            service.interrupt()
    assert time.monotonic() - started < 10
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and info["id_task"] == "task(long)"
    # What the interrupted batch had is kept, as A1111 does: its 4 images, marked in their infotexts.
    kept = response.json()["images"]
    assert len(kept) == 4 and from_b64(kept[0]).size == (SIZE, SIZE)
    assert all("Interrupted: step " in text for text in info["infotexts"])
    done = _task_progress(url, "task(long)")
    assert done["completed"] and done["state"]["interrupted"]
    assert len(api.txt2img(prompt="after", seed=5, width=SIZE, height=SIZE).images) == 1


def test_skip_abandons_the_current_batch_and_goes_on_with_the_next(url: str) -> None:
    body = {"prompt": "skip", "steps": 60, "n_iter": 2, "seed": 100, "force_task_id": "task(skip)"}
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(_post, url, body)
        try:
            _wait_for(lambda: _task_progress(url, "task(skip)").get("state", {}).get("sampling_step", 0) > 0)
            assert httpx.post(f"{url}/sdapi/v1/skip").json() == {}
            response = call.result(timeout=60)
        finally:
            httpx.post(f"{url}/sdapi/v1/interrupt")
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [101] and len(response.json()["images"]) == 1  # only the second batch's image


def test_api_jobs_wait_in_the_same_fifo_queue_as_ui_jobs(url: str, service: WebUIService) -> None:
    ui_job = service.submit(GenerationRequest(**LONG_JOB))  # what the Gradio UI does
    with ThreadPoolExecutor(1) as pool:
        try:
            api_call = pool.submit(_post, url, {"steps": 2, "seed": 9, "force_task_id": "task(behind-ui)"})

            _wait_for(lambda: _task_progress(url, "task(behind-ui)").get("queued"))
            waiting = _task_progress(url, "task(behind-ui)")
            assert waiting["queue_position"] == 1 and waiting["progress"] == 0 and "queue" in waiting["textinfo"]
            assert httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["job"] == ui_job.id
            reused = _post(url, {"steps": 2, "force_task_id": "task(behind-ui)"})
            assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == ["body", "force_task_id"]
        finally:
            service.interrupt(ui_job.id)
        response = api_call.result(timeout=60)
    assert response.status_code == 200 and json.loads(response.json()["info"])["all_seeds"] == [9]
    assert ui_job.state == "interrupted"


@pytest.mark.slow
def test_sixteen_concurrent_requests_all_come_back_and_progress_stays_responsive(url: str) -> None:
    """8 clients each send 2 txt2img at once; meanwhile another client polls /progress."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/sdapi/v1/progress").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    def client_session(i: int) -> list[dict]:
        with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(2) as pool:
            calls = [
                pool.submit(client.post, "/sdapi/v1/txt2img", json={"prompt": f"client {i}", "steps": 2})
                for _ in range(2)
            ]
            return [call.result().json() for call in calls]

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            bodies = [body for session in pool.map(client_session, range(8)) for body in session]
    finally:
        stop.set()
        poller.join()
    infos = [json.loads(body["info"]) for body in bodies]
    assert len(bodies) == 16 and all(len(body["images"]) == 1 for body in bodies)
    assert len({info["seed"] for info in infos}) == 16  # seed -1: each request drew its own
    assert len({info["id_task"] for info in infos}) == 16
    assert sorted(info["prompt"] for info in infos) == sorted(f"client {i}" for i in range(8) for _ in range(2))
    for body, info in zip(bodies, infos, strict=True):
        assert f"Seed: {info['seed']}" in from_b64(body["images"][0]).info["parameters"]
    # The event loop never waits for a generation: polls answer in milliseconds (a busy 2-core machine can
    # still stall one now and then, hence the loose maximum).
    assert len(latencies) >= 5 and statistics.median(latencies) < 0.3 and max(latencies) < 3.0, latencies


def test_webuiapi_with_api_auth(service: WebUIService) -> None:
    app = FastAPI()
    mount_api(app, service, api_auth=[(USER, PASSWORD)])
    with serve(app) as base:
        host, port = base.removeprefix("http://").split(":")
        client = webuiapi.WebUIApi(host=host, port=int(port), steps=2, username=USER, password=PASSWORD)
        assert client.txt2img(prompt="x", seed=2, width=SIZE, height=SIZE).info["all_seeds"] == [2]
        anonymous = webuiapi.WebUIApi(host=host, port=int(port), steps=2)
        with pytest.raises(RuntimeError, match="401"):
            anonymous.txt2img(prompt="x", width=SIZE, height=SIZE)


@pytest.mark.slow
def test_refresh_checkpoints_rereads_models_yaml_and_broken_models_get_422(tiny_checkpoint, tmp_path: Path) -> None:
    models_yaml = tmp_path / "models.yaml"
    tiny = f"  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
    models_yaml.write_text("models:\n" + tiny)
    service = WebUIService(models_yaml)
    app = FastAPI()
    mount_api(app, service)
    try:
        with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
            assert [m["title"] for m in client.get("/sdapi/v1/sd-models").json()] == ["tiny"]
            (tmp_path / "broken.safetensors").write_bytes(b"this is not a checkpoint")
            models_yaml.write_text(models_yaml.read_text() + "  - name: broken\n    path: broken.safetensors\n")
            assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
            listed = client.get("/sdapi/v1/sd-models").json()
            assert [m["title"] for m in listed] == ["tiny", "broken"]
            assert listed[1]["filename"] == str(tmp_path / "broken.safetensors")
            r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "broken"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
            broken = {"sd_model_checkpoint": "broken"}
            r = client.post("/sdapi/v1/txt2img", json={"steps": 2, "override_settings": broken})
            assert r.status_code == 422
            assert r.json()["detail"][0]["loc"] == ["body", "override_settings", "sd_model_checkpoint"]
            assert client.post("/sdapi/v1/txt2img", json={"steps": 2}).status_code == 200  # the queue goes on
    finally:
        service.close()


# ------------------------------------------------------------------ property-based: no input gives a 500

FUZZ_LIMITS = ApiLimits(max_steps=2, max_batch_size=2, max_n_iter=2, max_width=SIZE, max_height=SIZE)


def _fuzz_schema(spec: dict, service: WebUIService) -> dict:
    """The server's OpenAPI document, narrowed (in the test only) so that most valid cases actually generate:
    steps, sizes and batches around FUZZ_LIMITS, real sampler names and images, sampler options in range."""
    spec = json.loads(json.dumps(spec))
    images = [b64_png(Image.new("RGB", (SIZE, SIZE), (9, 99, 199))), b64_png(Image.new("L", (40, 24), 255))]
    for model in ("StableDiffusionTxt2ImgProcessingAPI", "StableDiffusionImg2ImgProcessingAPI"):
        schema = spec["components"]["schemas"][model]
        schema["required"] = [*schema.get("required", []), "steps"]  # the default (A1111's 50) is above FUZZ_LIMITS
        props = schema["properties"]
        props["steps"] = {"type": "integer", "minimum": 1, "maximum": 3}
        props["batch_size"] = {"type": "integer", "minimum": 1, "maximum": 3}
        props["n_iter"] = {"type": "integer", "minimum": 1, "maximum": 2}
        for side in ("width", "height"):
            props[side] = {"anyOf": [{"type": "integer", "enum": [56, SIZE, 72]}, {"type": "null"}]}
        props["sampler_name"] = {
            "anyOf": [{"type": "string", "enum": [*service.samplers.names, "nope"]}, {"type": "null"}]
        }
        props["scheduler"] = {
            "anyOf": [{"type": "string", "enum": ["automatic", "Karras", "exponential", "x"]}, {"type": "null"}]
        }
        for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            props[name] = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 2}, {"type": "null"}]}
        props["override_settings"] = {
            "type": "object",
            "enum": [{}, {"sd_model_checkpoint": "TINY"}, {"CLIP_stop_at_last_layers": 2}],
        }
        if "init_images" in props:
            props["init_images"] = {"type": "array", "items": {"type": "string", "enum": images}, "maxItems": 2}
            props["mask"] = {"anyOf": [{"type": "string", "enum": images}, {"type": "null"}]}
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
def test_schemathesis_generated_requests_never_get_a_500(service: WebUIService, path: str, mode: str) -> None:
    """Positive cases follow the schema (most of them generate images), negative ones break it on purpose."""
    import schemathesis
    from schemathesis.generation import GenerationMode

    app = FastAPI()
    mount_api(app, service, limits=FUZZ_LIMITS)
    with serve(app) as base:
        spec = _fuzz_schema(httpx.get(f"{base}/openapi.json").json(), service)
        operation = schemathesis.openapi.from_dict(spec)[path]["POST"]
        statuses: dict[int, int] = {}

        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def check(case) -> None:
            response = case.call(base_url=base, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.body, response.text)
            if response.status_code == 200:
                body = response.json()
                seeds = json.loads(body["info"])["all_seeds"]
                sent = case.body.get("send_images", True) if isinstance(case.body, dict) else True
                assert len(seeds) >= 1 and len(body["images"]) == (len(seeds) if sent else 0)
            else:
                assert 400 <= response.status_code < 500 and response.json()["detail"]

        check()
    if mode == "positive":
        assert statuses.get(200, 0) >= 3, statuses  # the run really generated images, not only refusals
    assert service.progress().state == "idle"  # nothing left stuck in the queue
