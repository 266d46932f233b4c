"""Our txt2img / img2img equal diffusers' pipelines on the same tiny random-weight model (CPU, fp32).

The diffusers UNet and VAE get our weights through diffusers' own key converters
(``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``), an independent key map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.diffusers_reference import build_diffusers_parts
from webui.pipeline import GenerationResult, generate, native_size, resolve_request
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest

diffusers = pytest.importorskip("diffusers")

SCHEDULER_KWARGS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
PROMPT, NEGATIVE, SEED, STEPS = "the cat", "dog", 1234, 10


def resolve_and_generate(model, samplers, request: GenerationRequest) -> GenerationResult:
    """What the service does with a request: resolve it for ``model``, then generate."""
    return generate(model, resolve_request(request, samplers, native_size(model)))


def make_scheduler(name: str):
    """diffusers' scheduler for each of our samplers, configured as FACTS.md says (SD 1.5 settings)."""
    if name == "DDIM":
        return diffusers.DDIMScheduler(**SCHEDULER_KWARGS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "DDPM":
        return diffusers.DDPMScheduler(**SCHEDULER_KWARGS, clip_sample=False)
    if name == "Euler a":
        return diffusers.EulerAncestralDiscreteScheduler(**SCHEDULER_KWARGS, steps_offset=1)
    if name == "DPM++ 2M":
        return diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KWARGS, steps_offset=1)
    return diffusers.EulerDiscreteScheduler(**SCHEDULER_KWARGS, steps_offset=1)


@pytest.fixture(scope="module")
def diffusers_parts(tiny_components):
    return build_diffusers_parts(tiny_components)


def pipeline(cls, parts, sampler_name):
    pipe = cls(
        **parts,
        scheduler=make_scheduler(sampler_name),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # The constructor rewrites a scheduler with steps_offset=0 to 1 (a legacy-config fix-up); set it
    # afterwards so that DDPM keeps its own configuration (950, 900, ..., 0 for 20 steps).
    pipe.scheduler = make_scheduler(sampler_name)
    return pipe


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.parametrize(
    "sampler_name",
    [
        "DDIM",
        "Euler",
        pytest.param("Euler a", marks=pytest.mark.slow),
        "DDPM",
        pytest.param("DPM++ 2M", marks=pytest.mark.slow),
    ],
)
def test_txt2img_equals_stable_diffusion_pipeline(diffusers_parts, tiny_model, samplers, sampler_name):
    pipe = pipeline(diffusers.StableDiffusionPipeline, diffusers_parts, sampler_name)
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    ours = resolve_and_generate(
        tiny_model,
        samplers,
        GenerationRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            sampler_name=sampler_name,
            steps=STEPS,
            cfg_scale=7.0,
            seed=SEED,
        ),
    )
    assert ours.images[0].size == expected.size == (64, 64)
    diff = max_pixel_difference(ours.images[0], expected)
    assert diff <= 1


@pytest.mark.parametrize("sampler_name", ["DDIM", "Euler"])
def test_img2img_at_strength_0_6_equals_img2img_pipeline(diffusers_parts, tiny_model, samplers, sampler_name):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    pipe = pipeline(diffusers.StableDiffusionImg2ImgPipeline, diffusers_parts, sampler_name)
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            image=init,
            strength=0.6,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    ours = resolve_and_generate(
        tiny_model,
        samplers,
        Img2ImgRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            sampler_name=sampler_name,
            steps=STEPS,
            cfg_scale=7.0,
            seed=SEED,
            init_images=[init],
            denoising_strength=0.6,
        ),
    )
    diff = max_pixel_difference(ours.images[0], expected)
    assert diff <= 1
    # and it is not trivially the init image
    assert max_pixel_difference(ours.images[0], init) > 10


@pytest.mark.slow
def test_inpainting_with_an_ordinary_model_equals_the_inpaint_pipeline(diffusers_parts, tiny_model, samplers):
    """diffusers blends the re-noised original into the kept region after every step, as we do."""
    rng = np.random.default_rng(2)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half (on the 8-pixel latent grid)
    pipe = pipeline(diffusers.StableDiffusionInpaintPipeline, diffusers_parts, "Euler")
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            image=init,
            mask_image=mask,
            strength=0.75,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    ours = resolve_and_generate(
        tiny_model,
        samplers,
        Img2ImgRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            sampler_name="Euler",
            steps=STEPS,
            cfg_scale=7.0,
            seed=SEED,
            init_images=[init],
            denoising_strength=0.75,
            mask=mask,
            mask_blur=0,
            inpainting_fill=1,
        ),
    ).images[0]
    ours_px, expected_px = np.asarray(ours, dtype=np.int16), np.asarray(expected, dtype=np.int16)
    assert int(np.abs(ours_px[:, :32] - expected_px[:, :32]).max()) <= 1  # the repainted half
    assert np.array_equal(ours_px[:, 32:], np.asarray(init, dtype=np.int16)[:, 32:])  # original pixels pasted back
    assert int(np.abs(ours_px[:, :32] - np.asarray(init, dtype=np.int16)[:, :32]).max()) > 10


def test_sizes_that_are_multiples_of_8_but_not_64_equal_diffusers(diffusers_parts, tiny_model, samplers):
    """72x88 px: 9x11 latents, odd on the way down; the UNet upsamples to the skip sizes like diffusers."""
    pipe = pipeline(diffusers.StableDiffusionPipeline, diffusers_parts, "Euler")
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=4,
            guidance_scale=7.0,
            height=88,
            width=72,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    ours = resolve_and_generate(
        tiny_model,
        samplers,
        GenerationRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            sampler_name="Euler",
            steps=4,
            seed=SEED,
            width=72,
            height=88,
        ),
    )
    assert ours.images[0].size == expected.size == (72, 88)
    assert max_pixel_difference(ours.images[0], expected) <= 1
