"""``<lora:NAME:0.8>`` gives the image of diffusers' ``load_lora_weights`` + ``fuse_lora(lora_scale=0.8)``.

Same tiny random-weight model, seed and sampler (CPU, fp32), within 1/255 per pixel: a kohya-ss LoRA with
LoCon convolutions and text-encoder layers, a diffusers/PEFT-layout LoRA, and two LoRAs at once, on a single-file
model and on a diffusers-folder model. The kohya keys are made from the *diffusers* modules' own names, so the
test does not share our key map.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.support.lora_files import kohya_specs_from_diffusers, write_kohya_lora
from tests.test_checkpoint_diffusers import TINY_UNET, TINY_VAE, perturbed, write_diffusers_folder
from tests.test_pipeline_diffusers import diffusers_parts, make_scheduler  # noqa: F401 - a fixture
from webui.extra_networks.lora_library import LoraLibrary
from webui.pipeline import generate, native_size, resolve_request
from webui.pipeline.requests import GenerationRequest

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

PROMPT, NEGATIVE, SEED, STEPS = "the cat", "dog", 1234, 6


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def kohya_specs(unet, text_model):
    """Attention layers, every ResBlock layer (LoCon convolutions and the time projection), the text encoder."""
    specs = kohya_specs_from_diffusers(unet, text_model)
    for name, module in unet.named_modules():
        if ".resnets." in name and isinstance(module, torch.nn.Linear):
            specs.append(("lora_unet_" + name.replace(".", "_"), tuple(module.weight.shape)))
    return specs


def write_peft_lora(path, unet, text_model, rank=4, seed=7):
    """diffusers' own LoRA layout: ``unet.<module>.lora_A.weight`` / ``lora_B``, ``text_encoder.<module>...``."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    modules = [
        ("unet", n, m) for n, m in unet.named_modules() if ".attentions." in n and isinstance(m, torch.nn.Linear)
    ]
    modules += [("text_encoder", n, m) for n, m in text_model.named_modules() if isinstance(m, torch.nn.Linear)]
    for prefix, name, module in modules:
        if prefix == "text_encoder" and not name.startswith("text_model."):
            name = "text_model." + name
        out_dim, in_dim = module.weight.shape
        tensors[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * 0.3
        tensors[f"{prefix}.{name}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def diffusers_image(parts, loras: list[tuple[str, float]], sampler="Euler") -> Image.Image:
    """The diffusers pipeline on copies of ``parts`` with ``loras`` (path, weight) loaded and fused."""
    parts = {k: copy.deepcopy(v) if k in ("unet", "text_encoder") else v for k, v in parts.items()}
    pipe = diffusers.StableDiffusionPipeline(
        **parts, scheduler=make_scheduler(sampler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1])
    elif loras:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
        pipe.fuse_lora(lora_scale=1.0, adapter_names=names)
    with torch.no_grad():
        return pipe(
            PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.0, height=64, width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]  # fmt: skip


def our_image(model, folder, tags: str, sampler="Euler") -> Image.Image:
    from webui.sampling import create_sampler_registry

    request = GenerationRequest(
        prompt=f"{PROMPT} {tags}", negative_prompt=NEGATIVE, sampler_name=sampler, steps=STEPS, seed=SEED
    )
    resolved = resolve_request(request, create_sampler_registry(), native_size(model), loras=LoraLibrary(folder))
    return generate(model, resolved).images[0]


@pytest.fixture(scope="module")
def single_file_model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory, diffusers_parts):  # noqa: F811 - the imported fixture
    folder = tmp_path_factory.mktemp("Lora")
    unet, text_model = diffusers_parts["unet"], diffusers_parts["text_encoder"]
    write_kohya_lora(folder / "kohya.safetensors", kohya_specs(unet, text_model), rank=4, seed=1, alpha=2.0)
    write_peft_lora(folder / "peft.safetensors", unet, text_model)
    return folder


def test_kohya_lora_with_locon_and_text_encoder_equals_diffusers_fuse_lora(
    single_file_model,
    diffusers_parts,  # noqa: F811
    lora_folder,
):
    expected = diffusers_image(diffusers_parts, [(lora_folder / "kohya.safetensors", 0.8)])
    ours = our_image(single_file_model, lora_folder, "<lora:kohya:0.8>")
    assert max_pixel_difference(ours, expected) <= 1
    plain = our_image(single_file_model, lora_folder, "")
    assert max_pixel_difference(plain, expected) > 10  # the LoRA changes the image: the match is not trivial


def test_peft_layout_lora_equals_diffusers(single_file_model, diffusers_parts, lora_folder):  # noqa: F811
    expected = diffusers_image(diffusers_parts, [(lora_folder / "peft.safetensors", 0.8)])
    ours = our_image(single_file_model, lora_folder, "<lora:peft:0.8>")
    assert max_pixel_difference(ours, expected) <= 1


def test_two_loras_at_once_equal_diffusers_two_adapters(single_file_model, diffusers_parts, lora_folder):  # noqa: F811
    loras = [(lora_folder / "kohya.safetensors", 0.8), (lora_folder / "peft.safetensors", 0.5)]
    expected = diffusers_image(diffusers_parts, loras)
    ours = our_image(single_file_model, lora_folder, "<lora:kohya:0.8> <lora:peft:0.5>")
    assert max_pixel_difference(ours, expected) <= 1


@pytest.mark.slow
def test_kohya_lora_on_a_diffusers_folder_model_equals_diffusers(tmp_path, tiny_components, lora_folder):
    from webui.models.loading import load_model

    unet = perturbed(diffusers.UNet2DConditionModel(**TINY_UNET), 1)
    vae = perturbed(diffusers.AutoencoderKL(**TINY_VAE), 2)
    folder = write_diffusers_folder(
        tmp_path / "tiny-diffusers", unet, vae, tiny_components.text_model, tiny_components.tokenizer_dir
    )
    model = load_model(folder, native_size=(64, 64))
    parts = {
        "unet": unet,
        "vae": vae,
        "text_encoder": tiny_components.text_model,
        "tokenizer": tiny_components.tokenizer,
    }
    expected = diffusers_image(parts, [(lora_folder / "kohya.safetensors", 0.8)])
    ours = our_image(model, lora_folder, "<lora:kohya:0.8>")
    assert max_pixel_difference(ours, expected) <= 1
