"""The HTTP layer of the REST API: auth on every route, body and request limits, 4xx answers naming the field,
the OpenAPI document, and mounting on a running Gradio app.

The service here is a stub that answers instantly (one solid-colour image per seed) and records what was
submitted, so these tests check exactly what reaches the queue; ``test_api_generation.py`` drives the real
service and model.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from tests.support.api import b64_png, from_b64, serve
from tests.support.fakes import interface_gaps
from webui.api import ApiLimits, mount_api
from webui.extra_networks.embeddings import EmbeddingFolder
from webui.jobs import Job, JobQueue
from webui.models.errors import CorruptCheckpointError
from webui.models.manager import ModelStatus
from webui.models.registry import ModelEntry, Registry
from webui.pipeline.errors import OutOfMemory
from webui.pipeline.requests import GenerationResult, resolve_request
from webui.pipeline.speedups import SpeedupSettings
from webui.sampling.registry import create_sampler_registry
from webui.service import IDLE, ProgressSnapshot
from webui.upscalers import UpscalerRegistry
from webui.upscalers.postprocess import run_extras

USER, PASSWORD = "alice", "s3cret:with:colons"
# Prompts that make the stub's job fail the way a real job can.
FAILURES = {
    "pipeline bug": RuntimeError("tensor shapes do not match"),
    "broken model": CorruptCheckpointError("tiny.safetensors is truncated"),
    "out of memory": OutOfMemory("batch_size", "the device ran out of memory; lower batch_size"),
}


def stub_result(job: Job) -> GenerationResult:
    """What a stub job produces at once: one solid-colour image per seed (red = seed % 256), or its failure."""
    if job.request.prompt in FAILURES:
        raise FAILURES[job.request.prompt]
    request = job.request  # resolved by submit(), as the real service does
    seeds = request.seeds()
    images = [Image.new("RGB", (request.width, request.height), (s % 256, 0, 0)) for s in seeds]
    infotexts = [f"{request.prompt}\nSteps: {request.steps}, Sampler: {request.sampler_name}, Seed: {s}" for s in seeds]
    return GenerationResult(images=images, seeds=seeds, infotexts=infotexts, request=request)


@dataclass
class StubModels:
    current_name: str | None = None
    loaded: list[str] = field(default_factory=list)

    def load(self, name: str) -> None:
        self.loaded.append(name)
        self.current_name = name


class StubService:
    """The whole ``webui.service.Service`` interface; jobs run on a real queue and finish at once."""

    def __init__(self) -> None:
        self.samplers = create_sampler_registry()
        self.registry = Registry(
            None,
            [
                ModelEntry("tiny", Path("/models/tiny.safetensors")),
                ModelEntry("Other-Model", Path("/models/other.ckpt")),
            ],
        )
        self.models = StubModels()
        self.submitted: list[tuple[Any, str | None]] = []
        self.calls: list[str] = []
        self._queue = JobQueue(stub_result, name="stub-generation")
        self.styles_file = Path("/nonexistent/styles.csv")  # no styles

    @property
    def current_model_name(self) -> str | None:
        return self.models.current_name

    def model_status(self) -> list[ModelStatus]:
        return [
            ModelStatus(
                e.name,
                e.name == self.models.current_name,
                e.name == self.models.current_name,
                e.name == "tiny",
                None,
                None,
            )
            for e in self.registry.entries
        ]

    def submit(
        self, request: Any, model_name: str | None = None, *, save: bool = True, owner: str | None = None
    ) -> Job:
        resolved = resolve_request(request, self.samplers, (64, 64))  # what the real service does before queueing
        self.submitted.append((request, model_name))
        return self._queue.submit(Job(resolved, model_name, save=save, owner=owner))

    def estimate_seconds(self, width: int, height: int, steps: int, images: int = 1) -> float | None:
        return None  # the stub never measures a step

    @property
    def queue(self) -> JobQueue:
        return self._queue

    def get_job(self, job_id: str) -> Job:
        return self._queue.get(job_id)

    def progress(self, job_id: str | None = None) -> ProgressSnapshot:
        if job_id is None:  # jobs finish at once: idle between requests
            return ProgressSnapshot(None, IDLE, None, 0, 0.0, None)
        return ProgressSnapshot.of(self.get_job(job_id), 0)

    def interrupt(self, job_id: str | None = None) -> bool:
        self.calls.append("interrupt")
        return False

    def skip(self, job_id: str | None = None) -> bool:
        self.calls.append("skip")
        return False

    def download_plan(self, name: str) -> None:
        return None  # the stub's models are all on disk

    def select_model(self, name: str, progress: Any = None, cancel: Any = None) -> None:
        self.models.load(name)

    def unload_model(self, name: str | None = None) -> None:
        self.calls.append("unload")
        self.models.current_name = None

    def loaded_model_info(self) -> None:
        return None  # the stub never holds a model

    def model_sha256(self, name: str) -> str | None:
        return "ab" * 32 if name == "tiny" else None

    def precision_text(self) -> str:
        return "UNet fp32, VAE fp32, text encoder fp32 (stub)"

    def reload_registry(self) -> Registry:
        self.calls.append("reload")
        return self.registry

    def token_count(self, prompt: str, steps: int = 20, model_name: str | None = None) -> tuple[int, int] | None:
        return None

    def close(self) -> None:
        self._queue.close()

    # LoRA (issue 15): an empty LoRA folder
    def loras(self) -> list[Any]:
        return []

    def refresh_loras(self) -> list[Any]:
        return []

    # Embeddings and VAE files (issue 15): the stub has empty folders.
    def embeddings(self) -> EmbeddingFolder:
        return EmbeddingFolder()

    def refresh_embeddings(self) -> EmbeddingFolder:
        return EmbeddingFolder()

    def vae_files(self) -> list:
        return []

    def refresh_vae(self) -> list:
        return []

    sd_vae = "Automatic"

    def set_sd_vae(self, choice: str) -> None:
        self.sd_vae = choice

    speedup_settings = SpeedupSettings()  # issue 19

    def set_speedup_options(self, options: Any) -> None:
        self.speedup_settings = self.speedup_settings.updated(options)

    # Upscalers (hires fix, Extras): the built-in ones, run for real (they need no model)
    upscalers = UpscalerRegistry()

    def run_extras(self, images: list[Any], request: Any, *, save: bool = True) -> list[tuple[Any, str]]:
        return run_extras(images, request, self.upscalers)


def test_the_stub_offers_the_whole_service_interface() -> None:
    assert interface_gaps(StubService()) == []


@pytest.fixture(scope="module")
def stub() -> Iterator[StubService]:
    service = StubService()
    yield service
    service.close()


@pytest.fixture(scope="module")
def open_url(stub: StubService):
    app = FastAPI()
    mount_api(
        app, stub, limits=ApiLimits(max_batch_size=2, max_n_iter=3, max_body_bytes=200_000, max_image_pixels=256 * 256)
    )
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def secured_url(stub: StubService):
    app = FastAPI()
    mount_api(app, stub, api_auth=[(USER, PASSWORD), ("bob", "other")])
    with serve(app) as url:
        yield url


@pytest.fixture
def client(open_url: str, stub: StubService):
    stub.submitted.clear()
    with httpx.Client(base_url=open_url, timeout=30) as c:
        yield c


def red_png(size: int = 16) -> str:
    return b64_png(Image.new("RGB", (size, size), (255, 0, 0)))


# Each route with a body that makes it succeed.
ROUTES: list[tuple[str, str, dict | None]] = [
    ("POST", "/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 2}),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["<png>"], "steps": 2}),
    ("POST", "/sdapi/v1/png-info", {"image": "<png>"}),
    ("GET", "/sdapi/v1/progress", None),
    ("POST", "/sdapi/v1/interrupt", None),
    ("POST", "/sdapi/v1/skip", None),
    ("GET", "/sdapi/v1/options", None),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny"}),
    ("GET", "/sdapi/v1/samplers", None),
    ("GET", "/sdapi/v1/schedulers", None),
    ("GET", "/sdapi/v1/sd-models", None),
    ("POST", "/sdapi/v1/refresh-checkpoints", None),
    ("GET", "/sdapi/v1/scripts", None),
    ("GET", "/sdapi/v1/loras", None),  # LoRA (issue 15)
    ("POST", "/sdapi/v1/refresh-loras", None),
    # embeddings and VAE files (issue 15)
    ("GET", "/sdapi/v1/embeddings", None),
    ("POST", "/sdapi/v1/refresh-embeddings", None),
    ("GET", "/sdapi/v1/sd-vae", None),
    ("POST", "/sdapi/v1/refresh-vae", None),
    ("GET", "/sdapi/v1/prompt-styles", None),
    ("GET", "/sdapi/v1/upscalers", None),
    ("GET", "/sdapi/v1/latent-upscale-modes", None),
    ("POST", "/sdapi/v1/extra-single-image", {"image": "<png>", "upscaler_1": "Lanczos"}),
    ("POST", "/sdapi/v1/extra-batch-images", {"imageList": [{"data": "<png>", "name": "a"}]}),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


def _body(body: dict | None) -> dict | None:
    if body is None:
        return None
    text = json.dumps(body).replace("<png>", red_png())
    return json.loads(text)


def test_every_route_is_mounted_and_covered_by_the_auth_test() -> None:
    app = FastAPI()
    mount_api(app, StubService())
    mounted = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    assert mounted == {(m, p) for m, p, _ in ROUTES}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_api_auth_refuses_missing_and_wrong_credentials_on_every_route(
    secured_url: str, method: str, path: str, body: dict | None
) -> None:
    with httpx.Client(base_url=secured_url, timeout=30) as c:
        wrong = [None, (USER, "wrong"), ("mallory", PASSWORD), (USER, PASSWORD + "x"), ("bob", PASSWORD)]
        for auth in wrong:
            response = c.request(method, path, json=_body(body), auth=auth)
            assert response.status_code == 401, (auth, response.text)
            assert response.headers["www-authenticate"] == "Basic"
        for auth in [(USER, PASSWORD), ("bob", "other")]:
            response = c.request(method, path, json=_body(body), auth=auth)
            assert response.status_code == 200, response.text


def test_api_auth_rejects_malformed_authorization_headers(secured_url: str) -> None:
    headers = [
        "Basic",
        "Basic !!!",
        "Bearer abc",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ]
    with httpx.Client(base_url=secured_url, timeout=30) as c:
        for header in headers:
            assert c.get("/sdapi/v1/samplers", headers={"Authorization": header}).status_code == 401, header


def test_openapi_declares_basic_auth_and_the_a1111_request_models(secured_url: str) -> None:
    schema = httpx.get(f"{secured_url}/openapi.json", auth=(USER, PASSWORD)).json()
    assert schema["components"]["securitySchemes"] == {"HTTPBasic": {"type": "http", "scheme": "basic"}}
    assert schema["security"] == [{"HTTPBasic": []}]
    models = schema["components"]["schemas"]
    txt2img = models["StableDiffusionTxt2ImgProcessingAPI"]["properties"]
    assert txt2img["steps"]["default"] == 50
    assert txt2img["cfg_scale"]["default"] == 7.0
    assert txt2img["sampler_index"]["default"] == "Euler"
    assert models["StableDiffusionImg2ImgProcessingAPI"]["properties"]["denoising_strength"]["default"] == 0.75
    assert not any(p.startswith("/gradio") for p in schema["paths"])
    docs = httpx.get(f"{secured_url}/docs", auth=(USER, PASSWORD))
    assert "swagger" in docs.text.lower() and "/openapi.json" in docs.text


def test_txt2img_returns_a1111_shape_with_seeds_and_a_task_id(client: httpx.Client, stub: StubService) -> None:
    response = client.post(
        "/sdapi/v1/txt2img",
        json={
            "prompt": "a cat",
            "seed": 7,
            "batch_size": 2,
            "n_iter": 1,
            "steps": 3,
            "sampler_name": "euler",
            "scheduler": "karras",
            "width": 64,
            "height": 64,
            "unknown_field": {"ignored": True},
            "force_task_id": "task(mine)",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8]
    assert info["id_task"] == "task(mine)"
    assert len(info["infotexts"]) == 2 and "Seed: 8" in info["infotexts"][1]
    images = [from_b64(b) for b in body["images"]]
    assert [im.getpixel((0, 0)) for im in images] == [(7, 0, 0), (8, 0, 0)]
    assert images[1].info["parameters"] == info["infotexts"][1]
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["seed"] == 7
    request, model = stub.submitted[-1]
    assert (request.sampler_name, request.scheduler, request.steps, model) == ("Euler", "Karras", 3, None)


def test_txt2img_model_override_and_clip_skip_reach_the_queue(client: httpx.Client, stub: StubService) -> None:
    body = {
        "prompt": "x",
        "steps": 2,
        "override_settings": {"sd_model_checkpoint": "other-model [0123456789]", "CLIP_stop_at_last_layers": 2},
    }
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    request, model = stub.submitted[-1]
    assert (model, request.clip_skip) == ("Other-Model", 2)


def test_send_images_false_returns_no_images(client: httpx.Client) -> None:
    body = client.post("/sdapi/v1/txt2img", json={"steps": 2, "send_images": False}).json()
    assert body["images"] == [] and len(json.loads(body["info"])["all_seeds"]) == 1


def _error_field(response: httpx.Response) -> list:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return detail[0]["loc"]


BAD_TXT2IMG = [
    ({"steps": "many"}, ["body", "steps"]),
    ({"steps": 0}, ["body", "steps"]),
    ({"steps": 151}, ["body", "steps"]),
    ({"batch_size": 3}, ["body", "batch_size"]),  # above the configured limit of 2
    ({"n_iter": 4}, ["body", "n_iter"]),
    ({"width": 65}, ["body", "width"]),  # not a multiple of 8 (the pipeline's rule)
    ({"width": 4096}, ["body", "width"]),
    ({"height": 0}, ["body", "height"]),
    ({"cfg_scale": 31}, ["body", "cfg_scale"]),
    ({"cfg_scale": "NaN"}, ["body", "cfg_scale"]),
    ({"seed": -2}, ["body", "seed"]),
    ({"sampler_name": "Nope"}, ["body", "sampler_name"]),
    ({"sampler_name": None, "sampler_index": "nope"}, ["body", "sampler_name"]),
    ({"scheduler": "weird"}, ["body", "scheduler"]),
    ({"override_settings": {"sd_model_checkpoint": "missing"}}, ["body", "override_settings", "sd_model_checkpoint"]),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, ["body", "clip_skip"]),
    ({"override_settings": "x"}, ["body", "override_settings"]),
    ({"enable_hr": True, "hr_upscaler": "Nope"}, ["body", "hr_upscaler"]),
    ({"alwayson_scripts": {"ControlNet": {"args": []}}}, ["body", "alwayson_scripts"]),
    ({"prompt": ["a", "list"]}, ["body", "prompt"]),
    ({"prompt": "x" * 20_001}, ["body", "prompt"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_TXT2IMG, ids=[json.dumps(b)[:40] for b, _ in BAD_TXT2IMG])
def test_bad_txt2img_field_gets_422_naming_it_and_queues_nothing(
    client: httpx.Client, stub: StubService, body: dict, loc: list
) -> None:
    response = client.post("/sdapi/v1/txt2img", json={"steps": 2, **body})
    assert response.status_code == 422, response.text
    assert _error_field(response) == loc
    assert stub.submitted == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "a \\ud800 cat", "steps": 2}',  # an unpaired surrogate: not valid Unicode
        b'{"steps": "\\udfff"}',
        b'{"override_settings": {"sd_model_checkpoint": "\\ud83d"}, "steps": 2}',
        b'{"cfg_scale": NaN, "steps": 2}',
        b'{"seed": 1e400, "steps": 2}',
        b'{"steps": ' + b"9" * 5000 + b"}",
        b'{"override_settings": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"\xff\xfe",
        b"null",
    ],
)
def test_hostile_json_gets_a_4xx_json_answer(client: httpx.Client, stub: StubService, body: bytes) -> None:
    r = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]
    assert stub.submitted == []


def test_malformed_json_and_wrong_body_type_get_422(client: httpx.Client, stub: StubService) -> None:
    r = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and _error_field(r)[0] == "body"
    r = client.post("/sdapi/v1/txt2img", json=[1, 2])
    assert r.status_code == 422
    assert stub.submitted == []


BAD_IMAGES = [
    ("", "empty"),
    ("not base64 at all!", "invalid base64"),
    (base64.b64encode(b"hello, not an image").decode(), "not a readable image"),
    ("http://169.254.169.254/latest/meta-data", "URLs are not fetched"),
    ("data:image/png,rawbytes", "base64 encoded"),
    (b64_png(Image.new("RGB", (300, 300))), "more than"),  # the limit here is 256x256 pixels
]


@pytest.mark.parametrize(("data", "message"), BAD_IMAGES, ids=[m for _, m in BAD_IMAGES])
def test_bad_images_get_422_naming_the_field(client: httpx.Client, stub: StubService, data: str, message: str) -> None:
    r = client.post("/sdapi/v1/img2img", json={"init_images": [red_png(), data], "steps": 2})
    assert r.status_code == 422, r.text
    assert _error_field(r) == ["body", "init_images", 1]
    assert message in r.json()["detail"][0]["msg"]
    if data:  # an empty mask means no mask, as in A1111
        r = client.post("/sdapi/v1/img2img", json={"init_images": [red_png()], "mask": data, "steps": 2})
        assert r.status_code == 422 and _error_field(r) == ["body", "mask"]
    r = client.post("/sdapi/v1/png-info", json={"image": data})
    assert r.status_code == 422 and _error_field(r) == ["body", "image"]
    assert stub.submitted == []


def test_img2img_without_init_images_gets_422(client: httpx.Client) -> None:
    for body in ({}, {"init_images": []}, {"init_images": None}):
        r = client.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 422 and _error_field(r) == ["body", "init_images"], r.text


def test_img2img_decodes_data_urls_and_masks(client: httpx.Client, stub: StubService) -> None:
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    r = client.post(
        "/sdapi/v1/img2img",
        json={
            "init_images": ["data:image/png;base64," + red_png()],
            "mask": b64_png(mask),
            "mask_blur": 2,
            "inpainting_fill": 1,
            "denoising_strength": 0.5,
            "steps": 2,
            "width": 64,
            "height": 64,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["init_images"] is None
    request, _ = stub.submitted[-1]
    assert request.init_images[0].getpixel((0, 0)) == (255, 0, 0)
    assert request.mask.getpixel((0, 0)) == 255 and request.mask.getpixel((15, 0)) == 0
    assert (request.mask_blur, request.inpainting_fill, request.denoising_strength) == (2, 1, 0.5)


def test_body_over_the_limit_gets_413_by_content_length(client: httpx.Client, stub: StubService) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 300_000})
    assert r.status_code == 413, r.text
    assert _error_field(r) == ["body"] and "200000 bytes" in r.json()["detail"][0]["msg"]
    assert stub.submitted == []


def test_streamed_body_over_the_limit_gets_413_without_content_length(open_url: str, stub: StubService) -> None:
    """A chunked upload has no Content-Length: the server counts the bytes and stops at the limit."""
    host, port = open_url.removeprefix("http://").split(":")
    chunk = b"x" * 50_000
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(10):  # 500 kB, more than the 200 kB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before everything is sent
        reply = b""
        while b'"too_large"' not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"application/json" in reply and b'"loc":["body"]' in reply
    assert stub.submitted == []


def test_failed_jobs_get_a_json_answer_naming_the_cause(client: httpx.Client) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "out of memory", "steps": 2})
    assert r.status_code == 422 and _error_field(r) == ["body", "batch_size"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "broken model", "steps": 2})
    assert r.status_code == 422 and _error_field(r) == ["body", "override_settings", "sd_model_checkpoint"]
    assert "truncated" in r.json()["detail"][0]["msg"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "pipeline bug", "steps": 2})
    assert r.status_code == 500  # the server's fault, not the request's: said plainly, as JSON
    assert r.json() == {"detail": "generation failed: RuntimeError: tensor shapes do not match"}


def _raw_reply(base: str, head: bytes) -> bytes:
    """Send only the request head (no body) and return the start of the reply."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        return sock.recv(4096)


def test_credentials_and_size_are_checked_before_the_body_is_read(secured_url: str) -> None:
    """A declared 60 MB upload is answered at once, without waiting for (or reading) a byte of it."""
    head = (
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000000\r\n"
    )
    assert _raw_reply(secured_url, head + b"\r\n").startswith(b"HTTP/1.1 401")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    assert _raw_reply(secured_url, head + b"Authorization: Basic " + token + b"\r\n\r\n").startswith(b"HTTP/1.1 413")


def test_png_info_reads_back_the_parameters_chunk(client: httpx.Client) -> None:
    generated = client.post("/sdapi/v1/txt2img", json={"prompt": "a dog", "steps": 4, "seed": 3}).json()
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + generated["images"][0]})
    assert r.status_code == 200
    body = r.json()
    assert body["info"] == json.loads(generated["info"])["infotexts"][0]
    assert body["parameters"]["Prompt"] == "a dog"
    assert body["parameters"]["Seed"] == "3" and body["parameters"]["Steps"] == "4"
    plain = client.post("/sdapi/v1/png-info", json={"image": red_png()}).json()
    assert plain == {"info": "", "items": {}, "parameters": {}}


def test_listing_routes_have_a1111_shapes(client: httpx.Client, stub: StubService) -> None:
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} <= set(samplers[0])
    assert [s["name"] for s in samplers] == stub.samplers.names
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers][:4] == ["Automatic", "Karras", "Exponential", "Uniform"]
    sgm = schedulers[5]
    assert (sgm["name"], sgm["label"], sgm["aliases"]) == ("sgm_uniform", "SGM Uniform", ["SGMUniform"])
    assert schedulers[1]["name"] == "karras"
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0] == {
        "title": "tiny",
        "model_name": "tiny",
        "hash": "ababababab",
        "sha256": "ab" * 32,
        "filename": "/models/tiny.safetensors",
        "config": None,
    }
    scripts = ["x/y/z plot", "prompts from file or textbox"]  # the built-in scripts, as A1111 names them
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": scripts, "img2img": scripts}


def test_options_switch_the_model_and_reject_unknown_ones(client: httpx.Client, stub: StubService) -> None:
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == (stub.models.current_name or "tiny")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "OTHER-MODEL", "foo": 1}).status_code == 200
    assert stub.models.loaded[-1] == "Other-Model"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "Other-Model"
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert r.status_code == 422 and _error_field(r) == ["body", "sd_model_checkpoint"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}).status_code == 200


def test_control_routes_reach_the_service(client: httpx.Client, stub: StubService) -> None:
    stub.calls.clear()
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/skip").json() == {}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert stub.calls == ["interrupt", "skip", "reload"]


def test_progress_when_idle_and_for_an_unknown_task(client: httpx.Client) -> None:
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    r = client.get("/sdapi/v1/progress", params={"id_task": "task(nope)"})
    assert r.status_code == 404 and _error_field(r) == ["query", "id_task"]
    r = client.get("/sdapi/v1/progress", params={"id_task": "x" * 201})
    assert r.status_code == 422 and _error_field(r) == ["query", "id_task"]


def test_progress_follows_a_finished_task(client: httpx.Client) -> None:
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"steps": 2}).json()["info"])
    done = client.get("/sdapi/v1/progress", params={"id_task": info["id_task"]}).json()
    assert done["progress"] == 1.0 and done["completed"] and done["id_task"] == info["id_task"]


def test_mount_replaces_the_apps_own_docs_and_refuses_a_second_mount() -> None:
    app = FastAPI()  # serves /docs and /openapi.json by default
    mount_api(app, StubService(), api_auth=[(USER, PASSWORD)])
    with serve(app) as url:
        assert httpx.get(f"{url}/openapi.json").status_code == 401
        assert httpx.get(f"{url}/docs").status_code == 401
    with pytest.raises(ValueError, match="already mounted"):
        mount_api(app, StubService())


@pytest.mark.slow
def test_mounts_on_a_running_gradio_app() -> None:
    """What webui/server.py does: launch the Blocks without blocking, then add the API routes to its app."""
    import gradio as gr

    with gr.Blocks() as demo:
        gr.Markdown("hello")
    app, local_url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, ssr_mode=False
    )
    try:
        mount_api(app, StubService(), api_auth=[(USER, PASSWORD)])
        url = local_url.rstrip("/")
        assert httpx.get(f"{url}/sdapi/v1/samplers").status_code == 401
        r = httpx.get(f"{url}/sdapi/v1/samplers", auth=(USER, PASSWORD))
        assert r.status_code == 200 and r.json()[0]["name"]
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": 2}, auth=(USER, PASSWORD))
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        assert httpx.get(f"{url}/openapi.json").status_code == 401  # Gradio's own schema route is replaced
        assert httpx.get(f"{url}/openapi.json", auth=(USER, PASSWORD)).json()["paths"]["/sdapi/v1/txt2img"]
        assert httpx.get(f"{url}/").status_code == 200  # the UI is still there
    finally:
        demo.close()
