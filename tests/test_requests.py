"""resolve_request(): the one step that checks a request and decides what it leaves open (no model needed)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from PIL import Image

from webui.pipeline import (
    GenerationRequest,
    Img2ImgRequest,
    InvalidRequest,
    ResolvedImg2Img,
    ResolvedRequest,
    resolve_request,
)
from webui.sampling import create_sampler_registry

NATIVE = (64, 96)


@pytest.fixture(scope="module")
def samplers():
    return create_sampler_registry()


def test_resolving_fills_in_everything_the_request_left_open(samplers):
    request = GenerationRequest(
        prompt="p",
        sampler_name="k_euler_a",
        scheduler="karras",
        seed=-1,
        steps=4.0,
        batch_size=2,
        sampler_options={"eta": "0.5"},
    )
    resolved = resolve_request(request, samplers, NATIVE)
    assert (resolved.width, resolved.height) == NATIVE
    assert 0 <= resolved.seed < 2**32 and resolved.seeds() == [resolved.seed, resolved.seed + 1]
    assert resolved.sampler is samplers.get("Euler a") and resolved.sampler_name == "Euler a"
    assert resolved.scheduler == "Karras"
    assert resolved.steps == 4 and type(resolved.steps) is int
    assert dict(resolved.sampler_options) == {"eta": 0.5, "s_noise": 1.0}  # the default merged in, "0.5" converted
    assert resolved.given_options == ("eta",)
    assert resolved.img2img is None and resolved.mode == "txt2img" and resolved.sampling_steps == 4
    explicit = resolve_request(dataclasses.replace(request, width=128, height=72, seed=5), samplers, NATIVE)
    assert (explicit.width, explicit.height, explicit.seed) == (128, 72, 5)


def test_resolving_never_changes_the_request(samplers):
    options = {"eta": "0.5"}
    request = GenerationRequest(
        prompt="p", sampler_name="euler A", scheduler="karras", steps=4.0, seed=-1, n_iter=2.0, sampler_options=options
    )
    before = dataclasses.asdict(request)
    resolve_request(request, samplers, NATIVE)
    request.validate()
    assert dataclasses.asdict(request) == before and request.sampler_options is options
    assert type(request.steps) is float and request.width is None and request.seed == -1


def test_a_random_seed_is_drawn_once_per_resolve(samplers):
    request = GenerationRequest(seed=-1)
    seeds = {resolve_request(request, samplers, NATIVE).seed for _ in range(5)}
    assert len(seeds) > 1 and request.seed == -1


def test_the_resolved_request_is_immutable(samplers):
    init = Image.new("RGB", (8, 8))
    images = [init]
    resolved = resolve_request(Img2ImgRequest(init_images=images, denoising_strength=0.5, steps=10), samplers, NATIVE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.img2img.denoising_strength = 1.0  # type: ignore[misc, union-attr]
    with pytest.raises(TypeError):
        resolved.sampler_options["eta"] = 0.0  # type: ignore[index]
    images.append(Image.new("RGB", (8, 8)))  # the caller's list changes; the queued request does not
    assert resolved.img2img == ResolvedImg2Img(
        init_images=(init,),
        denoising_strength=0.5,
        resize_mode=0,
        mask=None,
        mask_blur=4,
        inpainting_fill=1,
        inpainting_mask_invert=0,
    )
    assert resolved.mode == "img2img" and resolved.sampling_steps == 5  # the last int(10 * 0.5) steps


def test_the_resolved_request_has_a_value_for_every_field(samplers):
    resolved = resolve_request(GenerationRequest(), samplers, NATIVE)
    assert isinstance(resolved, ResolvedRequest)
    missing = [f.name for f in dataclasses.fields(resolved) if getattr(resolved, f.name) is None]
    # None only for what txt2img does not have, and for seed resize (variation seeds), which is off by default
    assert missing == ["img2img", "seed_resize_from", "script", "hires"]  # no script (X/Y/Z plot), no hires fix


def test_eta_is_a_sampler_option_that_samplers_without_one_ignore(samplers):
    euler = resolve_request(GenerationRequest(sampler_name="Euler", sampler_options={"eta": 0.3}), samplers, NATIVE)
    assert "eta" not in euler.sampler_options and euler.given_options == ()
    ddim = resolve_request(GenerationRequest(sampler_name="DDIM", sampler_options={"eta": None}), samplers, NATIVE)
    assert dict(ddim.sampler_options) == {"eta": 0.0} and ddim.given_options == ()  # None: the default


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest(sampler_name="DDIM", sampler_options={"eta": math.nan}), "eta"),
        (GenerationRequest(sampler_name="DDIM", sampler_options={"eta": 10.5}), "eta"),
        (GenerationRequest(sampler_name="DDIM", sampler_options={"eta": "lots"}), "sampler_options"),
        (GenerationRequest(sampler_name="Euler", sampler_options={"order": 2}), "sampler_options"),
        (GenerationRequest(sampler_options=["eta"]), "sampler_options"),
        (GenerationRequest(sampler_name="nope"), "sampler_name"),
        (GenerationRequest(scheduler="cosine"), "scheduler"),
        (GenerationRequest(steps=4.5), "steps"),
    ],
)
def test_bad_requests_name_the_field(samplers, request_, field):
    with pytest.raises(InvalidRequest) as info:
        resolve_request(request_, samplers, NATIVE)
    assert info.value.field == field


def test_a_native_size_the_pipeline_cannot_use_is_refused(samplers):
    with pytest.raises(InvalidRequest) as info:
        resolve_request(GenerationRequest(), samplers, (100, 64))
    assert info.value.field == "width" and "multiple of 8" in info.value.message
    assert resolve_request(GenerationRequest(width=64), samplers, (100, 72)).height == 72
