"""Embeddings and VAE files through the real service on the tiny model: token counter, TI hashes and VAE keys in
the infotext, the "SD VAE" setting and per-request override, models.yaml ``vae:``, refresh, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.tiny_model import build_tiny_components
from webui.models.hashing import file_sha256
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.infotext import parse_infotext, request_from_infotext
from webui.pipeline.requests import GenerationRequest
from webui.service import WebUIService

REQUEST = dict(negative_prompt="", sampler_name="Euler", steps=3, seed=11, width=64, height=64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_checkpoint, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("user")
    embeddings, vae = root / "embeddings", root / "VAE"
    embeddings.mkdir()
    vae.mkdir()
    torch.save({"string_to_param": {"*": torch.randn(4, 128)}, "step": 30}, embeddings / "inkstyle.pt")
    save_file({"emb_params": torch.randn(2, 768)}, str(embeddings / "sd15word.safetensors"))  # another width
    other = build_tiny_components(tiny_tokenizer_dir, seed=9).vae
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(vae / "other.safetensors"))
    models_yaml = root / "models.yaml"
    models_yaml.write_text(
        "models:\n"
        f"  - name: tiny\n    path: {tiny_checkpoint.path}\n    default: true\n    width: 64\n    height: 64\n"
        f"  - name: tiny-with-vae\n    path: {tiny_checkpoint.path}\n    width: 64\n    height: 64\n"
        "    vae: VAE/other.safetensors\n"
    )
    return root, models_yaml


@pytest.fixture(scope="module")
def service(folders):
    root, models_yaml = folders
    svc = WebUIService(models_yaml, embeddings_dir=root / "embeddings", vae_dir=root / "VAE", version="test")
    yield svc
    svc.close()


def run(service: WebUIService, model: str | None = None, **fields):
    return service.submit(GenerationRequest(**{**REQUEST, **fields}), model).result(timeout=120)


def test_embeddings_are_listed_loaded_or_skipped_by_width(service) -> None:
    service.select_model("tiny")
    found = service.embeddings()
    assert list(found.loaded) == ["inkstyle"] and list(found.skipped) == ["sd15word"]
    assert (found.loaded["inkstyle"].vectors, found.loaded["inkstyle"].shape, found.loaded["inkstyle"].step) == (
        4,
        128,
        30,
    )


def test_the_token_counter_counts_an_embedding_as_its_vectors(service) -> None:
    service.select_model("tiny")
    plain, _ = service.token_count("the cat")
    assert service.token_count("the cat inkstyle") == (plain + 4, 75)


def test_a_job_with_an_embedding_writes_ti_hashes_and_differs(service, folders) -> None:
    root, _ = folders
    with_word = run(service, prompt="the cat (inkstyle:1.1)")
    params = parse_infotext(with_word.infotexts[0])
    assert params["TI hashes"] == f"inkstyle: {file_sha256(root / 'embeddings' / 'inkstyle.pt')[:12]}"
    without = run(service, prompt="the cat")
    assert "TI hashes" not in parse_infotext(without.infotexts[0])
    assert with_word.images[0].tobytes() != without.images[0].tobytes()


def test_the_vae_setting_override_and_models_yaml_default(service, folders) -> None:
    root, _ = folders
    vae_hash = file_sha256(root / "VAE" / "other.safetensors")[:10]
    assert service.sd_vae == "Automatic" and [v.name for v in service.vae_files()] == ["other.safetensors"]
    baked = run(service, "tiny", prompt="the cat")
    assert "VAE" not in parse_infotext(baked.infotexts[0])

    override = run(service, "tiny", prompt="the cat", sd_vae="other.safetensors")
    params = parse_infotext(override.infotexts[0])
    assert (params["VAE hash"], params["VAE"]) == (vae_hash, "other.safetensors")
    assert override.images[0].tobytes() != baked.images[0].tobytes()
    # pasting that infotext asks for the same VAE again, and gives the same image
    again = service.submit(request_from_infotext(override.infotexts[0]), "tiny").result(timeout=120)
    assert again.images[0].tobytes() == override.images[0].tobytes()

    assert run(service, "tiny", prompt="the cat").images[0].tobytes() == baked.images[0].tobytes()  # back to own
    automatic = run(service, "tiny-with-vae", prompt="the cat")  # models.yaml vae: is its Automatic
    assert automatic.images[0].tobytes() == override.images[0].tobytes()
    assert run(service, "tiny-with-vae", prompt="the cat", sd_vae="None").images[0].tobytes() == (
        baked.images[0].tobytes()
    )

    service.set_sd_vae("other.safetensors")
    try:
        assert run(service, "tiny", prompt="the cat").images[0].tobytes() == override.images[0].tobytes()
    finally:
        service.set_sd_vae("Automatic")


def test_an_unknown_vae_is_refused_at_submit_naming_the_choices(service) -> None:
    with pytest.raises(InvalidRequest, match=r"sd_vae.*unknown VAE 'nope'; there are: Automatic, None, other"):
        service.submit(GenerationRequest(prompt="x", sd_vae="nope"))
    with pytest.raises(InvalidRequest, match="unknown VAE"):
        service.set_sd_vae("nope")
    assert service.sd_vae == "Automatic"


def test_refresh_picks_up_new_files_and_a_bad_file_fails_only_its_job(service, folders) -> None:
    root, _ = folders
    (root / "VAE" / "broken.pt").write_bytes(b"garbage that is no pickle")
    torch.save({"string_to_param": {"*": torch.randn(1, 128)}}, root / "embeddings" / "later.pt")
    assert "later" not in service.embeddings().loaded
    assert "later" in service.refresh_embeddings().loaded
    assert [v.name for v in service.refresh_vae()] == ["broken.pt", "other.safetensors"]
    job = service.submit(GenerationRequest(**{**REQUEST, "prompt": "x"}, sd_vae="broken.pt"), "tiny")
    with pytest.raises(Exception, match=r"broken\.pt: not a usable SD 1\.x VAE"):
        job.result(timeout=120)
    assert run(service, "tiny", prompt="later").images  # the app keeps working


def test_launch_flags_default_to_the_project_folders_like_a1111() -> None:
    import launch

    root = Path(launch.__file__).resolve().parent
    args = launch.build_parser().parse_args([])
    options = launch.options_from_args(args)
    assert (options.embeddings_dir, options.vae_dir) == (root / "models" / "embeddings", root / "models" / "VAE")
    given = launch.options_from_args(launch.build_parser().parse_args(["--embeddings-dir", "e", "--vae-dir", "v"]))
    assert (given.embeddings_dir, given.vae_dir) == (Path("e"), Path("v"))
