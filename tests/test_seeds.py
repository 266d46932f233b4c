"""Variation seeds (AUTOMATIC1111's ``subseed``, ``subseed_strength``, ``seed_resize_from_w/h``).

The reference noise here is built from AUTOMATIC1111's description (``modules/rng.py``: ``slerp`` normalising over
dim 1, its near-parallel fallback, ``ImageRNG.first``'s centred paste) and handed to diffusers' pipeline as
``latents=``; our generation must give the same image.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_pipeline_diffusers import (  # noqa: F401 (fixtures)
    NEGATIVE,
    PROMPT,
    STEPS,
    diffusers_parts,
    max_pixel_difference,
    pipeline,
    resolve_and_generate,
    samplers,
    tiny_model,
)
from webui.pipeline.infotext import parse_infotext, request_from_infotext
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.seeds import Variation, image_generators, initial_noise, paste_centred, slerp, variation_noise

diffusers = pytest.importorskip("diffusers")

SEED, SUBSEED = 1234, 777
SHAPE = (4, 8, 8)


def draw(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def a1111_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Written out from A1111's ``slerp`` (one angle per (channel, column): norms over dim 1)."""
    cos = (low / low.norm(dim=1, keepdim=True) * (high / high.norm(dim=1, keepdim=True))).sum(1)
    if cos.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(cos)
    return (torch.sin((1 - val) * omega) / torch.sin(omega))[:, None] * low + (
        torch.sin(val * omega) / torch.sin(omega)
    )[:, None] * high


def a1111_noise(seed: int, subseed: int, strength: float, shape=SHAPE, resize_from=None) -> torch.Tensor:
    """One image's starting noise as A1111's ``ImageRNG.first`` with the CPU RNG source."""
    c, h, w = shape
    small = shape if resize_from is None else (c, resize_from[1] // 8, resize_from[0] // 8)
    noise = draw(seed, small)
    if strength:
        noise = a1111_slerp(strength, noise, draw(subseed, small))
    if small != shape:
        full = draw(seed, shape)
        dy, dx = (h - small[1]) // 2, (w - small[2]) // 2
        if dy >= 0 and dx >= 0:
            full[:, dy : dy + small[1], dx : dx + small[2]] = noise
        else:  # larger: the centre of the small noise
            full[:, :, :] = noise[:, -dy : -dy + h, -dx : -dx + w]
        noise = full
    return noise


def test_slerp_ends_and_normalising_axis():
    low, high = draw(1, SHAPE), draw(2, SHAPE)
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-5)
    assert torch.allclose(slerp(1.0, low, high), high, atol=1e-5)
    assert torch.allclose(slerp(0.3, low, high), a1111_slerp(0.3, low, high), atol=1e-6)
    # The angle is per (channel, column): rescaling one column of ``high`` changes only that column's result.
    scaled = high.clone()
    scaled[:, :, 0] *= 5
    diff = (slerp(0.3, low, scaled) - slerp(0.3, low, high)).abs().amax(dim=(0, 1))
    assert diff[0] > 0.1 and diff[1:].max() < 1e-5


def test_slerp_of_near_parallel_noise_uses_a1111_linear_fallback():
    low = draw(1, SHAPE)
    high = low * 1.0001
    assert torch.equal(slerp(0.25, low, high), low * 0.25 + high * 0.75)


def test_strength_zero_is_bit_identical_to_plain_noise():
    seeds = [5, 6]
    plain = initial_noise(SHAPE, image_generators(seeds), "cpu")
    varied = variation_noise(SHAPE, seeds, image_generators(seeds), Variation((9, 10), 0.0), "cpu")
    assert torch.equal(plain, varied)


def test_variation_leaves_the_generator_where_plain_noise_leaves_it():
    """Stochastic samplers draw their later noise from the same generator: those draws must not move."""
    plain, varied = image_generators([5]), image_generators([5])
    initial_noise(SHAPE, plain, "cpu")
    variation_noise(SHAPE, [5], varied, Variation((9,), 0.5, (48, 40)), "cpu")
    assert torch.equal(torch.randn(3, generator=plain[0]), torch.randn(3, generator=varied[0]))


@pytest.mark.parametrize("resize_from", [(48, 32), (96, 80), (64, 64)])
def test_seed_resize_matches_a1111_placement(resize_from):
    ours = variation_noise(SHAPE, [SEED], image_generators([SEED]), Variation((SUBSEED,), 0.4, resize_from), "cpu")
    assert torch.allclose(ours[0], a1111_noise(SEED, SUBSEED, 0.4, resize_from=resize_from), atol=1e-6)


def test_paste_centred_offsets():
    into = torch.zeros(1, 5, 7)
    out = paste_centred(torch.ones(1, 3, 3), into)
    assert out[0].nonzero().tolist() == [[y, x] for y in range(1, 4) for x in range(2, 5)]


def test_requests_check_variation_fields(samplers):  # noqa: F811
    from webui.pipeline import resolve_request
    from webui.pipeline.errors import InvalidRequest

    for bad in ({"subseed_strength": 1.5}, {"subseed": -2}, {"seed_resize_from_w": 4, "seed_resize_from_h": 64}):
        with pytest.raises(InvalidRequest) as err:
            resolve_request(GenerationRequest(**bad), samplers, (64, 64))
        assert err.value.field == next(iter(bad))
    resolved = resolve_request(
        GenerationRequest(seed=3, subseed=-1, subseed_strength=0.5, batch_size=3), samplers, (64, 64)
    )
    assert resolved.seeds() == [3, 3, 3]  # A1111: with variation seeds every image keeps the seed
    assert resolved.subseed >= 0 and resolved.subseeds() == [resolved.subseed + i for i in range(3)]
    off = resolve_request(GenerationRequest(seed=3, seed_resize_from_w=64, seed_resize_from_h=-1), samplers, (64, 64))
    assert off.seed_resize_from is None and off.subseed == -1 and off.seeds() == [3]


def diffusers_image(parts, latents: torch.Tensor):
    pipe = pipeline(diffusers.StableDiffusionPipeline, parts, "Euler")
    with torch.no_grad():
        return pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            num_images_per_prompt=latents.shape[0],
            latents=latents,
        ).images


@pytest.mark.parametrize(
    ("strength", "batch", "resize_from"),
    [
        (0.1, 1, None),
        (0.5, 1, None),
        (1.0, 1, None),
        (0.5, 2, None),
        pytest.param(0.3, 1, (48, 40), id="seed-resize"),
    ],
)
def test_variation_seeds_equal_diffusers_with_a1111_noise(
    diffusers_parts,  # noqa: F811
    tiny_model,  # noqa: F811
    samplers,  # noqa: F811
    strength,
    batch,
    resize_from,
):
    # A1111: every image of the batch keeps the seed; image i takes subseed + i.
    latents = torch.stack([a1111_noise(SEED, SUBSEED + i, strength, resize_from=resize_from) for i in range(batch)])
    expected = diffusers_image(diffusers_parts, latents)
    w, h = resize_from or (-1, -1)
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler_name="Euler",
        steps=STEPS,
        seed=SEED,
        batch_size=batch,
        subseed=SUBSEED,
        subseed_strength=strength,
        seed_resize_from_w=w,
        seed_resize_from_h=h,
    )
    ours = resolve_and_generate(tiny_model, samplers, request)
    assert len(ours.images) == batch
    for image, reference in zip(ours.images, expected, strict=True):
        assert max_pixel_difference(image, reference) <= 1
    # and the variation did something: strength 1 is the subseed's own image
    plain = resolve_and_generate(tiny_model, samplers, GenerationRequest(**{**request.__dict__, "subseed_strength": 0}))
    assert max_pixel_difference(ours.images[0], plain.images[0]) > 0
    info = parse_infotext(ours.infotexts[-1])
    assert info["Seed"] == str(SEED) and info["Variation seed"] == str(SUBSEED + batch - 1)
    assert float(info["Variation seed strength"]) == strength
    if resize_from:
        assert (info["Seed resize from-1"], info["Seed resize from-2"]) == ("48", "40")
    # PNG Info restores it: regenerating from the infotext gives the same image
    again = resolve_and_generate(tiny_model, samplers, request_from_infotext(ours.infotexts[-1]))
    assert max_pixel_difference(again.images[0], ours.images[-1]) <= 1


def test_subseed_strength_one_equals_the_subseed_alone(tiny_model, samplers):  # noqa: F811
    common = {"prompt": PROMPT, "sampler_name": "Euler", "steps": 3, "cfg_scale": 7.0}
    varied = resolve_and_generate(
        tiny_model, samplers, GenerationRequest(seed=1, subseed=SUBSEED, subseed_strength=1.0, **common)
    )
    alone = resolve_and_generate(tiny_model, samplers, GenerationRequest(seed=SUBSEED, **common))
    assert max_pixel_difference(varied.images[0], alone.images[0]) <= 1
