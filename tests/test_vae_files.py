"""Separate VAE files: every layout loads to the same weights, swapping gives diffusers' image with that VAE
(single-file and diffusers-folder models) without touching the UNet or text encoder, choices resolve as A1111's
"Automatic" / "None" / a name, and bad files each give one clear message."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.tiny_model import build_tiny_components
from webui.extra_networks.vae_files import (
    AUTOMATIC,
    NONE,
    VaeError,
    VaeFile,
    find_vae_files,
    load_vae_file,
    resolve_vae_choice,
    use_vae,
    vae_infotext,
)
from webui.models.hashing import file_sha256


@pytest.fixture(scope="module")
def other_vae(tiny_tokenizer_dir):
    """A VAE of the tiny model's shape with other weights (seed 5)."""
    return build_tiny_components(tiny_tokenizer_dir, seed=5).vae


def state(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def write_layouts(folder: Path, vae: torch.nn.Module) -> dict[str, Path]:
    """The VAE as users have it: bare keys (vae-ft-mse layout), with the checkpoint prefix, a .ckpt nesting it
    under ``state_dict`` with training leftovers, and a diffusers AutoencoderKL folder."""
    folder.mkdir(parents=True, exist_ok=True)
    bare = state(vae)
    paths = {
        "bare": folder / "vae-ft-mse.safetensors",
        "prefixed": folder / "prefixed.pt",
        "ckpt": folder / "nested.ckpt",
    }
    save_file(bare, str(paths["bare"]))
    torch.save({f"first_stage_model.{k}": v for k, v in bare.items()}, paths["prefixed"])
    leftovers = {"loss.logvar": torch.zeros(()), "model_ema.decay": torch.tensor(0.999)}
    torch.save({"state_dict": {**bare, **leftovers}, "global_step": 10}, paths["ckpt"])
    return paths


def test_every_single_file_layout_loads_the_same_weights(tmp_path: Path, other_vae) -> None:
    paths = write_layouts(tmp_path, other_vae)
    for path in paths.values():
        loaded = load_vae_file(path)
        for key, tensor in state(other_vae).items():
            torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0, msg=f"{path.name}: {key}")


def test_a_diffusers_autoencoder_folder_loads_the_same_weights(tmp_path: Path, other_vae) -> None:
    diffusers = pytest.importorskip("diffusers")
    folder = write_diffusers_vae(tmp_path / "my-vae", other_vae, diffusers)
    assert find_vae_files(tmp_path) == [VaeFile("my-vae", folder)]
    loaded = load_vae_file(folder)
    for key, tensor in state(other_vae).items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0)


def diffusers_vae(vae: torch.nn.Module, diffusers):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from tests.test_checkpoint_diffusers import TINY_VAE

    theirs = diffusers.AutoencoderKL(**TINY_VAE)
    prefixed = {f"first_stage_model.{k}": v for k, v in state(vae).items()}
    theirs.load_state_dict(convert_ldm_vae_checkpoint(prefixed, dict(theirs.config)))
    return theirs.eval()


def write_diffusers_vae(folder: Path, vae: torch.nn.Module, diffusers) -> Path:
    diffusers_vae(vae, diffusers).save_pretrained(folder)
    return folder


def test_find_vae_files_lists_files_and_folders_by_a1111_name(tmp_path: Path, other_vae) -> None:
    write_layouts(tmp_path / "sub", other_vae)
    (tmp_path / "readme.txt").write_text("x")
    names = [vae.name for vae in find_vae_files(tmp_path)]
    assert names == ["nested.ckpt", "prefixed.pt", "vae-ft-mse.safetensors"]
    assert find_vae_files(tmp_path / "missing") == []


def test_choices_resolve_as_a1111_automatic_none_and_names(tmp_path: Path, other_vae) -> None:
    paths = write_layouts(tmp_path / "VAE", other_vae)
    files = find_vae_files(tmp_path / "VAE")
    checkpoint = tmp_path / "models" / "mine.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    root = tmp_path

    assert resolve_vae_choice(AUTOMATIC, files, None, checkpoint, root) is None  # nothing: the baked-in VAE
    assert resolve_vae_choice(None, files, "prefixed.pt", checkpoint, root) == paths["prefixed"]  # models.yaml
    assert resolve_vae_choice(AUTOMATIC, files, "VAE/nested.ckpt", checkpoint, root) == root / "VAE/nested.ckpt"
    near = checkpoint.with_name("mine.vae.safetensors")
    near.write_bytes(b"x")
    assert resolve_vae_choice(AUTOMATIC, files, None, checkpoint, root) == near  # A1111's <checkpoint>.vae.*
    assert resolve_vae_choice(NONE, files, "prefixed.pt", checkpoint, root) is None
    assert resolve_vae_choice("vae-ft-mse.safetensors", files, None, checkpoint, root) == paths["bare"]
    assert resolve_vae_choice("vae-ft-mse", files, None, checkpoint, root) == paths["bare"]  # the stem works too
    with pytest.raises(VaeError, match=r"unknown VAE 'nope'; there are: Automatic, None, nested\.ckpt"):
        resolve_vae_choice("nope", files, None, checkpoint, root)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_bad_vae_files_each_give_one_message_and_the_model_keeps_its_vae(
    tmp_path: Path, suffix: str, tiny_checkpoint, other_vae
) -> None:
    from webui.models.loading import load_model

    model = load_model(tiny_checkpoint.path, native_size=(64, 64))
    good = write_layouts(tmp_path, other_vae)["bare"]
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / f"noise{suffix}"
    noise.write_bytes(os.urandom(4096))
    wrong = tmp_path / f"unet{suffix}"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(4)}, str(wrong))
    baked = model.vae
    for path in (truncated, noise, wrong):
        with pytest.raises(VaeError, match=rf"^{path.name}: not a usable SD 1.x VAE: .+") as info:
            use_vae(model, path)
        assert "\n" not in str(info.value)
        assert model.vae is baked and model.vae_path is None


def test_a_pickled_vae_with_code_is_refused_and_never_runs(tmp_path: Path, tiny_checkpoint) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(VaeError, match=r"evil\.pt: not a usable SD 1\.x VAE: .*refused.*arbitrary code"):
        load_vae_file(path)
    assert not marker.exists()


# --- swapping, against diffusers ------------------------------------------------------------

SEED, STEPS, PROMPT = 99, 6, "the cat"


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


def ours(model, samplers):
    from webui.pipeline import generate, native_size, resolve_request
    from webui.pipeline.requests import GenerationRequest

    request = GenerationRequest(prompt=PROMPT, negative_prompt="dog", sampler_name="Euler", steps=STEPS, seed=SEED)
    return generate(model, resolve_request(request, samplers, native_size(model)))


def diffusers_image(parts, vae, diffusers):
    from tests.test_pipeline_diffusers import pipeline

    pipe = pipeline(diffusers.StableDiffusionPipeline, {**parts, "vae": vae}, "Euler")
    with torch.no_grad():
        return pipe(
            PROMPT,
            negative_prompt="dog",
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]


@pytest.fixture(scope="module")
def reference_parts(tiny_components):
    """diffusers' UNet and VAE with the tiny model's weights (the reference test's conversion)."""
    from tests.test_pipeline_diffusers import diffusers_parts

    return diffusers_parts.__wrapped__(tiny_components)


@pytest.mark.parametrize("layout", ["single-file", pytest.param("diffusers-folder", marks=pytest.mark.slow)])
def test_swapping_the_vae_equals_the_diffusers_pipeline_with_that_vae(
    tmp_path: Path, layout: str, tiny_checkpoint, tiny_components, other_vae, samplers, reference_parts
) -> None:
    diffusers = pytest.importorskip("diffusers")
    from tests.test_checkpoint_diffusers import write_diffusers_folder
    from tests.test_pipeline_diffusers import max_pixel_difference
    from webui.models.loading import load_model

    if layout == "single-file":
        model = load_model(tiny_checkpoint.path, native_size=(64, 64))
    else:
        folder = write_diffusers_folder(
            tmp_path / "tiny-diffusers",
            reference_parts["unet"],
            reference_parts["vae"],
            copy.deepcopy(tiny_components.text_model),
            tiny_checkpoint.tokenizer_dir,
        )
        model = load_model(folder, native_size=(64, 64))
    vae_path = write_layouts(tmp_path / "VAE", other_vae)["bare"]
    unet, text_encoder = model.unet, model.text_encoder
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}

    baked = ours(model, samplers)
    use_vae(model, vae_path)
    swapped = ours(model, samplers)
    expected = diffusers_image(reference_parts, diffusers_vae(other_vae, diffusers), diffusers)

    assert max_pixel_difference(swapped.images[0], expected) <= 1
    assert max_pixel_difference(swapped.images[0], baked.images[0]) > 10  # the VAE really changed
    assert model.unet is unet and model.text_encoder is text_encoder  # nothing else reloaded
    assert all(torch.equal(v, unet_before[k]) for k, v in unet.state_dict().items())
    assert vae_infotext(model) == {"VAE hash": file_sha256(vae_path)[:10], "VAE": "vae-ft-mse.safetensors"}

    use_vae(model, None)  # "None": the checkpoint's own VAE again, without reading the checkpoint
    assert max_pixel_difference(ours(model, samplers).images[0], baked.images[0]) == 0
    assert vae_infotext(model) == {}
