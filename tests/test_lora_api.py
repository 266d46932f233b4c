"""LoRA through the real service and the A1111 API: listing, refresh, jobs, and every bad file as one clear 422.

A bad file (unknown name, SD 2.x/SDXL, keys of no layer, truncated, random bytes, a pickle with code) fails its
request with a message naming the file and why, and the next request works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import torch
import webuiapi
from fastapi import FastAPI

from tests.support.api import from_b64, serve
from tests.support.lora_files import kohya_specs_from_model, write_header_only, write_kohya_lora
from webui.api import mount_api
from webui.service import WebUIService

SIZE = 64


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_checkpoint):
    from webui.models.loading import load_model

    folder = tmp_path_factory.mktemp("Lora")
    specs = kohya_specs_from_model(load_model(tiny_checkpoint.path))
    meta = {"ss_output_name": "shiny", "ss_tag_frequency": json.dumps({"10_shiny": {"shiny": 10}})}
    write_kohya_lora(folder / "shiny_v2.safetensors", specs, seed=1, metadata=meta)
    write_kohya_lora(folder / "people" / "someone.safetensors", specs, seed=2)
    # An SDXL LoRA: kohya's two text encoders (only the header is needed: it is refused before its tensors).
    write_header_only(
        folder / "xl_style.safetensors",
        {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": {"dtype": "F32", "shape": [4, 768],
                                                                            "data_offsets": [0, 1 << 30]}},
        data_bytes=1 << 30,
    )  # fmt: skip
    write_header_only(
        folder / "sd2_style.safetensors",
        {
            "__metadata__": {"ss_v2": "True"},
            "lora_unet_mid_block_attentions_0_proj_in.alpha": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        },
        data_bytes=4,
    )
    write_kohya_lora(folder / "other_model.safetensors", [("lora_unet_no_such_block_proj", (8, 8))], seed=3)
    good = (folder / "people" / "someone.safetensors").read_bytes()
    (folder / "cut_short.safetensors").write_bytes(good[: len(good) // 2])
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    (folder / "noise.safetensors").write_bytes(noise.numpy().tobytes())

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"lora_unet_x.lora_down.weight": Boom()}, folder / "evil.pt")
    return folder


@pytest.fixture(scope="module")
def service(tiny_checkpoint, lora_dir, tmp_path_factory) -> Iterator[WebUIService]:
    folder = tmp_path_factory.mktemp("lora_service")
    yaml = folder / "models.yaml"
    yaml.write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    default: true\n"
        f"    width: {SIZE}\n    height: {SIZE}\n"
    )
    service = WebUIService(yaml, lora_dir=lora_dir)
    yield service
    service.close()


@pytest.fixture(scope="module")
def url(service) -> Iterator[str]:
    app = FastAPI()
    mount_api(app, service)
    with serve(app) as base:
        yield base


def txt2img(url: str, prompt: str) -> httpx.Response:
    body = {"prompt": prompt, "steps": 2, "seed": 3, "sampler_name": "Euler", "save_images": False}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_loras_lists_every_file_as_a1111_does(url, lora_dir):
    host, port = url.removeprefix("http://").split(":")
    items = {item["name"]: item for item in webuiapi.WebUIApi(host=host, port=int(port)).get_loras()}
    assert set(items) == {"shiny_v2", "someone", "xl_style", "sd2_style", "other_model", "cut_short", "noise", "evil"}
    shiny = items["shiny_v2"]
    assert shiny["alias"] == "shiny" and shiny["path"] == str(lora_dir / "shiny_v2.safetensors")
    assert shiny["metadata"]["ss_tag_frequency"] == {"10_shiny": {"shiny": 10}}  # decoded as A1111 does
    assert items["someone"]["alias"] == "someone" and items["someone"]["metadata"] == {}


def test_refresh_loras_finds_a_new_file(url, lora_dir, tiny_checkpoint):
    (lora_dir / "late.safetensors").write_bytes((lora_dir / "people" / "someone.safetensors").read_bytes())
    before = [i["name"] for i in httpx.get(f"{url}/sdapi/v1/loras").json()]
    assert "late" not in before
    assert httpx.post(f"{url}/sdapi/v1/refresh-loras").status_code == 200
    assert "late" in [i["name"] for i in httpx.get(f"{url}/sdapi/v1/loras").json()]
    (lora_dir / "late.safetensors").unlink()
    httpx.post(f"{url}/sdapi/v1/refresh-loras")


def test_a_job_with_a_lora_by_alias_answers_with_lora_hashes(url, service):
    response = txt2img(url, "the cat <lora:shiny:0.7>")
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    short = service.lora_library.short_hash(service.lora_library.find("shiny").path)
    assert f'Lora hashes: "shiny: {short}"' in info["infotexts"][0]
    plain = txt2img(url, "the cat")
    assert from_b64(plain.json()["images"][0]).tobytes() != from_b64(response.json()["images"][0]).tobytes()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:shiny_v3:1>", "unknown LoRA 'shiny_v3' (not a file stem or alias in"),
        (
            "<lora:xl_style:1>",
            "xl_style.safetensors is a LoRA for another model family, not SD 1.x: it has a second text encoder",
        ),
        (
            "<lora:sd2_style:1>",
            "sd2_style.safetensors is a LoRA for another model family, not SD 1.x: its metadata says it was trained "
            "on SD 2.x",
        ),
        (
            "<lora:other_model:1>",
            "other_model.safetensors: 1 of its 1 modules match no layer of this model "
            "(e.g. lora_unet_no_such_block_proj)",
        ),
        ("<lora:cut_short:1>", "cut_short.safetensors is truncated"),
        ("<lora:noise:1>", "noise.safetensors is not a valid .safetensors file"),
        # (the global it names is print, or whatever replaced it: importing ray swaps builtins.print for its own)
        ("<lora:evil:1>", "evil.pt was refused: this pickle asks to load "),
    ],
)
def test_bad_loras_fail_the_request_with_one_clear_message_and_the_app_keeps_working(url, prompt, message, capsys):
    response = txt2img(url, f"the cat {prompt}")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "prompt"]
    assert message in detail["msg"]
    assert "this must never run" not in capsys.readouterr().out
    assert txt2img(url, "the cat <lora:someone:1>").status_code == 200
