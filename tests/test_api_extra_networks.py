"""The A1111 routes for embeddings and VAE files, and ``sd_vae`` in options and override_settings, over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI
from safetensors.torch import save_file

from tests.support.api import serve
from tests.support.fakes import FakeService
from webui.api import mount_api
from webui.pipeline.infotext import parse_infotext

API = "/sdapi/v1"


def write_user_folders(root: Path) -> tuple[Path, Path]:
    embeddings, vae = root / "embeddings", root / "VAE"
    (embeddings / "neg").mkdir(parents=True)
    vae.mkdir()
    torch.save(
        {
            "string_to_param": {"*": torch.randn(3, 768)},
            "step": 2000,
            "sd_checkpoint": "e1441589a6",
            "sd_checkpoint_name": "v1-5-pruned",
        },
        embeddings / "neg" / "easynegative.pt",
    )
    save_file({"emb_params": torch.randn(2, 1024)}, str(embeddings / "sd2word.safetensors"))
    (vae / "vae-ft-mse-840000-ema-pruned.safetensors").write_bytes(b"not read until used")
    return embeddings, vae


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeService]:
    embeddings, vae = write_user_folders(tmp_path)
    service = FakeService(embeddings_dir=embeddings, vae_dir=vae)
    service.select_model("tiny")
    yield service
    service.close()


@pytest.fixture
def client(fake: FakeService) -> Iterator[httpx.Client]:
    app = FastAPI()
    mount_api(app, fake)
    with serve(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def test_embeddings_route_has_a1111_shape(client: httpx.Client) -> None:
    body = client.get(f"{API}/embeddings").json()
    assert body == {
        "loaded": {
            "easynegative": {
                "step": 2000,
                "sd_checkpoint": "e1441589a6",
                "sd_checkpoint_name": "v1-5-pruned",
                "shape": 768,
                "vectors": 3,
            }
        },
        "skipped": {
            "sd2word": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 1024, "vectors": 2}
        },
    }


def test_refresh_routes_read_the_folders_again(client: httpx.Client, tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, tmp_path / "embeddings" / "new.pt")
    (tmp_path / "VAE" / "other.pt").write_bytes(b"x")
    assert "new" not in client.get(f"{API}/embeddings").json()["loaded"]
    assert [v["model_name"] for v in client.get(f"{API}/sd-vae").json()] == ["vae-ft-mse-840000-ema-pruned.safetensors"]
    assert client.post(f"{API}/refresh-embeddings").status_code == 200
    assert client.post(f"{API}/refresh-vae").status_code == 200
    assert "new" in client.get(f"{API}/embeddings").json()["loaded"]
    assert client.get(f"{API}/sd-vae").json() == [
        {"model_name": "other.pt", "filename": str(tmp_path / "VAE" / "other.pt")},
        {
            "model_name": "vae-ft-mse-840000-ema-pruned.safetensors",
            "filename": str(tmp_path / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors"),
        },
    ]


def test_sd_vae_option_reads_sets_and_refuses_unknown_names(client: httpx.Client, fake: FakeService) -> None:
    assert client.get(f"{API}/options").json()["sd_vae"] == "Automatic"
    name = "vae-ft-mse-840000-ema-pruned.safetensors"
    assert client.post(f"{API}/options", json={"sd_vae": name}).status_code == 200
    assert client.get(f"{API}/options").json()["sd_vae"] == name == fake.sd_vae
    client.post(f"{API}/txt2img", json={"prompt": "a", "steps": 1})
    assert fake.submitted[-1].request.sd_vae == name  # the setting reaches the job
    answer = client.post(f"{API}/options", json={"sd_vae": "missing.pt"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "sd_vae"]
    assert "unknown VAE 'missing.pt'; there are: Automatic, None, vae-ft-mse" in answer.json()["detail"][0]["msg"]
    assert client.post(f"{API}/options", json={"sd_vae": 3}).status_code == 422
    assert fake.sd_vae == name


def test_override_settings_sd_vae_is_per_request(client: httpx.Client, fake: FakeService) -> None:
    ok = client.post(f"{API}/txt2img", json={"prompt": "a", "steps": 1, "override_settings": {"sd_vae": "None"}})
    assert ok.status_code == 200 and fake.submitted[-1].request.sd_vae == "None"
    assert fake.sd_vae == "Automatic"  # the setting did not change
    bad = client.post(f"{API}/txt2img", json={"prompt": "a", "override_settings": {"sd_vae": "nope"}})
    assert bad.status_code == 422 and "unknown VAE 'nope'" in bad.json()["detail"][0]["msg"]


def test_real_service_writes_ti_hashes_and_vae_keys(tmp_path: Path, tiny_checkpoint, tiny_tokenizer_dir) -> None:
    """The tiny model (128 wide) through the real service: a word in the negative prompt and a VAE override."""
    from tests.support.tiny_model import build_tiny_components
    from webui.models.hashing import file_sha256
    from webui.service import WebUIService

    (tmp_path / "embeddings").mkdir()
    (tmp_path / "VAE").mkdir()
    torch.save({"string_to_param": {"*": torch.randn(2, 128)}}, tmp_path / "embeddings" / "blurry.pt")
    vae = build_tiny_components(tiny_tokenizer_dir, seed=3).vae
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "VAE" / "sharp.safetensors"))
    service = WebUIService(
        tiny_checkpoint.models_yaml, embeddings_dir=tmp_path / "embeddings", vae_dir=tmp_path / "VAE"
    )
    app = FastAPI()
    mount_api(app, service)
    try:
        with serve(app) as base, httpx.Client(base_url=base, timeout=120) as client:
            payload = {
                "prompt": "the cat",
                "negative_prompt": "(blurry:1.2)",
                "steps": 2,
                "seed": 5,
                "override_settings": {"sd_vae": "sharp.safetensors"},
            }
            answer = client.post(f"{API}/txt2img", json=payload)
            assert answer.status_code == 200, answer.text
            params = parse_infotext(json.loads(answer.json()["info"])["infotexts"][0])
            assert params["TI hashes"] == f"blurry: {file_sha256(tmp_path / 'embeddings' / 'blurry.pt')[:12]}"
            assert params["VAE hash"] == file_sha256(tmp_path / "VAE" / "sharp.safetensors")[:10]
            assert params["VAE"] == "sharp.safetensors"
            assert client.get(f"{API}/embeddings").json()["loaded"]["blurry"]["shape"] == 128
    finally:
        service.close()
