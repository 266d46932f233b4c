# ruff: noqa: F811  (the fixtures imported from test_pipeline_diffusers are parameters of the tests)
"""The new samplers through the whole txt2img pipeline equal diffusers' StableDiffusionPipeline with the matching
scheduler: same tiny single-file model, 64x64, final images within 1/255."""

from __future__ import annotations

import pytest
import torch

from tests.test_pipeline_diffusers import (  # noqa: F401  (fixtures)
    NEGATIVE,
    PROMPT,
    SCHEDULER_KWARGS,
    SEED,
    diffusers_parts,
    max_pixel_difference,
    resolve_and_generate,
    samplers,
    tiny_model,
)
from webui.pipeline.requests import GenerationRequest

diffusers = pytest.importorskip("diffusers")

# our sampler (and options) -> diffusers scheduler and configuration (SD 1.5 settings)
SCHEDULERS = {
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {"noise_sampler_seed": SEED}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
}


def pipeline(parts, name: str):
    class_name, config = SCHEDULERS[name]
    scheduler = getattr(diffusers, class_name)(**SCHEDULER_KWARGS, **config)
    pipe = diffusers.StableDiffusionPipeline(
        **parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = scheduler  # keep our configuration (the constructor may rewrite steps_offset)
    return pipe


@pytest.mark.parametrize(
    ("name", "steps", "options"),
    [
        ("UniPC", 8, {}),
        ("LCM", 4, {}),
        ("DPM++ SDE", 8, {}),
        pytest.param("DPM2", 8, {}, marks=pytest.mark.slow),
        pytest.param("DPM2 a", 8, {}, marks=pytest.mark.slow),
        pytest.param("DPM++ 2M SDE", 10, {"noise": "white"}, marks=pytest.mark.slow),
        pytest.param("DEIS", 10, {}, marks=pytest.mark.slow),
        pytest.param("PLMS", 10, {}, marks=pytest.mark.slow),
    ],
)
def test_txt2img_equals_stable_diffusion_pipeline(diffusers_parts, tiny_model, samplers, name, steps, options):
    pipe = pipeline(diffusers_parts, name)
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler_name=name,
        steps=steps,
        cfg_scale=7.0,
        seed=SEED,
        sampler_options=options,
    )
    ours = resolve_and_generate(tiny_model, samplers, request)
    assert max_pixel_difference(ours.images[0], expected) <= 1


def test_euler_with_the_beta_schedule_equals_diffusers_beta_sigmas(diffusers_parts, tiny_model, samplers):
    pytest.importorskip("scipy")
    scheduler = diffusers.EulerDiscreteScheduler(**SCHEDULER_KWARGS, use_beta_sigmas=True)
    pipe = diffusers.StableDiffusionPipeline(
        **diffusers_parts,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=9,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler_name="Euler",
        scheduler="beta",
        steps=9,
        cfg_scale=7.5,
        seed=SEED,
    )
    assert max_pixel_difference(resolve_and_generate(tiny_model, samplers, request).images[0], expected) <= 1
