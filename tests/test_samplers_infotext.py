# ruff: noqa: F811  (the API fixtures imported from test_api_http are parameters of the tests)
"""AUTOMATIC1111 infotexts naming the new samplers and schedules round-trip: parse -> resolve -> format, and
through PNG Info into the API's txt2img."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.test_api_http import StubService, client, open_url, stub  # noqa: F401  (fixtures)
from webui.pipeline.infotext import format_infotext, request_from_infotext
from webui.pipeline.outputs import png_bytes_info
from webui.pipeline.requests import resolve_request
from webui.sampling import create_sampler_registry

REGISTRY = create_sampler_registry()

# (Sampler and Schedule type as AUTOMATIC1111 1.10 writes them, what we resolve them to)
CASES = [
    ("DPM++ 2M SDE", "Karras", "DPM++ 2M SDE", "Karras"),
    ("DPM++ 2M SDE Heun", "Exponential", "DPM++ 2M SDE Heun", "Exponential"),
    ("DPM++ SDE", "Karras", "DPM++ SDE", "Karras"),
    ("DPM++ 2S a", "Automatic", "DPM++ 2S a", "Automatic"),
    ("DPM++ 3M SDE", "Exponential", "DPM++ 3M SDE", "Exponential"),
    ("DPM2", "Karras", "DPM2", "Karras"),
    ("DPM2 a", "Karras", "DPM2 a", "Karras"),
    ("LCM", "Automatic", "LCM", "Automatic"),
    ("PLMS", "Automatic", "PLMS", "Automatic"),
    ("UniPC", "Automatic", "UniPC", "Automatic"),
    ("DEIS", "Automatic", "DEIS", "Automatic"),
    ("Restart", "Karras", "Restart", "Karras"),
    ("Euler", "Uniform", "Euler", "Uniform"),
    ("Euler a", "SGM Uniform", "Euler a", "SGM Uniform"),
    ("DPM++ 2M", "Simple", "DPM++ 2M", "Simple"),
    ("DPM++ 2M", "Normal", "DPM++ 2M", "Normal"),
    ("Euler", "DDIM", "Euler", "DDIM"),
    ("DPM++ 2M SDE", "Polyexponential", "DPM++ 2M SDE", "Polyexponential"),
    ("Euler", "KL Optimal", "Euler", "KL Optimal"),
    ("DPM++ 2M", "Beta", "DPM++ 2M", "Beta"),
    ("DPM++ 2M", "Align Your Steps", "DPM++ 2M", "Align Your Steps"),
    ("k_dpmpp_2m_sde", "sgm_uniform", "DPM++ 2M SDE", "SGM Uniform"),  # API-style names
]


def infotext(sampler: str, schedule: str | None) -> str:
    pair = f"Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "")
    return f"a cat\nNegative prompt: dog\nSteps: 8, {pair}CFG scale: 7, Seed: 5, Size: 64x64, Model: tiny"


@pytest.mark.parametrize(("sampler", "schedule", "name", "schedule_name"), CASES)
def test_a1111_infotext_resolves_and_formats_back(sampler, schedule, name, schedule_name):
    resolved = resolve_request(request_from_infotext(infotext(sampler, schedule)), REGISTRY, (64, 64))
    assert (resolved.sampler.name, resolved.scheduler) == (name, schedule_name)
    text = format_infotext(resolved, seed=5)
    assert f"Sampler: {name}, Schedule type: {schedule_name}," in text


@pytest.mark.parametrize(
    ("legacy", "name", "schedule_name"),
    [
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
    ],
)
def test_pre_1_9_infotexts_with_the_schedule_in_the_sampler_name(legacy, name, schedule_name):
    resolved = resolve_request(request_from_infotext(infotext(legacy, None)), REGISTRY, (64, 64))
    assert (resolved.sampler.name, resolved.scheduler) == (name, schedule_name)


def test_lcm_with_another_schedule_is_refused_with_the_reason():
    from webui.pipeline.requests import InvalidRequest

    with pytest.raises(InvalidRequest, match="sampler 'LCM' supports Automatic, not 'Karras'"):
        resolve_request(request_from_infotext(infotext("LCM", "Karras")), REGISTRY, (64, 64))


@pytest.mark.parametrize(("sampler", "schedule", "name", "schedule_name"), CASES[:12] + CASES[-2:])
def test_png_info_then_txt2img_through_the_api(
    client: httpx.Client, stub: StubService, sampler, schedule, name, schedule_name
):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_bytes_info(infotext(sampler, schedule)))
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert info.status_code == 200, info.text
    params = info.json()["parameters"]
    assert (params["Sampler"], params["Schedule type"]) == (sampler, schedule)
    r = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "a cat", "steps": 2, "sampler_name": params["Sampler"], "scheduler": params["Schedule type"]},
    )
    assert r.status_code == 200, r.text
    request, _ = stub.submitted[-1]
    resolved = resolve_request(request, stub.samplers, (64, 64))
    assert (resolved.sampler.name, resolved.scheduler) == (name, schedule_name)
