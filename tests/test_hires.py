"""Hires fix: A1111's step rule and sizes, equal to diffusers' two-pipeline chain, progress, interrupt, infotext.

The diffusers reference of one image: ``StableDiffusionPipeline`` at 64x64 with ``output_type="latent"``, the
latents interpolated as the latent mode says (or decoded, resized with PIL's Lanczos and given as an image), then
``StableDiffusionImg2ImgPipeline`` with ``strength=d``, ``num_inference_steps=int(N / d)`` and a generator seeded
with the seed. With N=10 and d=0.5 diffusers' img2img rule and A1111's hires rule start at the same schedule index.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.support.diffusers_reference import build_diffusers_parts
from tests.test_pipeline_diffusers import NEGATIVE, PROMPT, SEED, max_pixel_difference, pipeline
from webui.pipeline import (
    GenerationControl,
    GenerationRequest,
    InvalidRequest,
    Progress,
    generate,
    native_size,
    parse_infotext,
    request_from_infotext,
    resolve_request,
)
from webui.pipeline.hires import (
    LATENT_UPSCALE_MODES,
    HiresRequest,
    crop_latents,
    hires_target,
    second_pass_schedule,
)
from webui.pipeline.outputs import read_infotext
from webui.pipeline.requests import Img2ImgRequest
from webui.sampling.driver import img2img_start

diffusers = pytest.importorskip("diffusers")

HR_STEPS, STRENGTH, FIRST_STEPS = 10, 0.5, 6


@pytest.fixture(scope="module")
def diffusers_parts(tiny_components):
    return build_diffusers_parts(tiny_components)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


def hires_request(upscaler: str = "Latent", sampler: str = "Euler", **hires) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler_name=sampler,
        steps=FIRST_STEPS,
        cfg_scale=7.0,
        seed=SEED,
        hires=HiresRequest(hr_upscaler=upscaler, hr_second_pass_steps=HR_STEPS, denoising_strength=STRENGTH, **hires),
    )


def run(model, samplers, request, **kwargs):
    return generate(model, resolve_request(request, samplers, native_size(model)), **kwargs)


# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize("strength", [0.01, 0.05, 0.1, 0.3, 1 / 3, 0.45, 0.5, 0.7, 0.75, 0.9, 0.999, 1.0])
def test_second_pass_runs_exactly_n_steps_from_a1111s_start_index(strength):
    for steps in range(1, 151):
        total, start_strength = second_pass_schedule(steps, strength)
        assert total == int(steps / min(strength, 0.999))
        # A1111: t_enc = N - 1, sampling from index total - t_enc - 1 = total - N
        assert img2img_start(total, start_strength) == total - steps


def test_strength_zero_samples_nothing():
    assert second_pass_schedule(10, 0.0) == (0, 0.0)


@pytest.mark.parametrize(
    ("size", "hires", "expected"),
    [
        ((512, 512), HiresRequest(hr_scale=2), (1024, 1024, 0, 0)),
        ((512, 768), HiresRequest(hr_scale=1.5), (768, 1152, 0, 0)),
        ((512, 512), HiresRequest(hr_scale=1.3), (664, 664, 0, 0)),  # int(665.6) = 665, on the latent grid 664
        ((512, 768), HiresRequest(hr_resize_x=1024), (1024, 1536, 0, 0)),  # one side: aspect kept
        ((512, 768), HiresRequest(hr_resize_y=1024), (680, 1024, 0, 0)),
        ((512, 512), HiresRequest(hr_resize_x=1024, hr_resize_y=768), (1024, 1024, 0, 256)),  # crop 256 px of y
        ((512, 512), HiresRequest(hr_resize_x=768, hr_resize_y=1024), (1024, 1024, 256, 0)),
    ],
)
def test_hires_target_as_a1111(size, hires, expected):
    assert hires_target(*size, hires) == expected


def test_crop_latents_centres_the_cut():
    x = torch.arange(10 * 12, dtype=torch.float32).reshape(1, 1, 10, 12)
    out = crop_latents(x, 3, 2)
    assert out.shape == (1, 1, 8, 9)
    assert torch.equal(out, x[:, :, 1:9, 1:10])


def test_resolve_fills_the_first_pass_values_and_sizes(samplers):
    resolved = resolve_request(
        GenerationRequest(prompt="a", steps=7, cfg_scale=5, width=64, height=96, hires=HiresRequest()),
        samplers,
        (64, 64),
    )
    hires = resolved.hires
    assert hires is not None
    assert (hires.width, hires.height) == (128, 192)
    assert hires.steps == 7 and hires.denoising_strength == 0.7
    assert hires.sampler.name == resolved.sampler.name and hires.scheduler == resolved.scheduler
    assert hires.prompt == "a" and hires.cfg_scale == 5
    assert resolved.sampling_steps == 14  # both passes count in the progress


@pytest.mark.parametrize(
    ("hires", "field", "words"),
    [
        (HiresRequest(hr_upscaler="Bogus"), "hr_upscaler", "Latent (nearest-exact), None, Lanczos, Nearest"),
        (HiresRequest(hr_scale=40), "hr_scale", "between"),
        (HiresRequest(hr_scale=4.5), "hr_scale", "2048"),  # 512 * 4.5 is over the generation limit
        (HiresRequest(hr_resize_x=4096), "hr_resize_x", "2048"),
        (HiresRequest(denoising_strength=1.5), "denoising_strength", "between"),
        (HiresRequest(denoising_strength=0.01), "denoising_strength", "too low"),
        (HiresRequest(hr_sampler_name="nope"), "hr_sampler_name", "nope"),
        (HiresRequest(hr_scheduler="nope"), "hr_scheduler", "nope"),
        (HiresRequest(hr_cfg=float("nan")), "hr_cfg", "finite"),
    ],
)
def test_bad_hires_fields_are_refused_naming_the_field(samplers, hires, field, words):
    with pytest.raises(InvalidRequest) as err:
        resolve_request(GenerationRequest(width=512, height=512, hires=hires), samplers, (512, 512))
    assert err.value.field == field
    assert words in err.value.message


def test_hires_is_refused_on_img2img(samplers):
    request = Img2ImgRequest(init_images=[Image.new("RGB", (64, 64))], hires=HiresRequest())
    with pytest.raises(InvalidRequest) as err:
        resolve_request(request, samplers, (64, 64))
    assert err.value.field == "enable_hr"


# ------------------------------------------------------------------ equal to diffusers


def diffusers_hires(parts, upscale, sampler_name="Euler"):
    """The two-pipeline chain; ``upscale(latents, first_image)`` returns the img2img pipeline's ``image``."""
    first = pipeline(diffusers.StableDiffusionPipeline, parts, sampler_name)
    second = pipeline(diffusers.StableDiffusionImg2ImgPipeline, parts, sampler_name)
    common = {"negative_prompt": NEGATIVE, "guidance_scale": 7.0}
    with torch.no_grad():
        latents = first(
            PROMPT,
            num_inference_steps=FIRST_STEPS,
            height=64,
            width=64,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(SEED),
            **common,
        ).images
        image = first.vae.decode(latents / first.vae.config.scaling_factor).sample
        first_image = first.image_processor.postprocess(image, output_type="pil")[0]
        return second(
            PROMPT,
            image=upscale(latents, first_image),
            strength=STRENGTH,
            num_inference_steps=int(HR_STEPS / STRENGTH),
            generator=torch.Generator("cpu").manual_seed(SEED),
            **common,
        ).images[0]


@pytest.mark.parametrize(
    "mode",
    [
        "Latent",
        pytest.param("Latent (antialiased)", marks=pytest.mark.slow),
        "Latent (bicubic)",
        pytest.param("Latent (bicubic antialiased)", marks=pytest.mark.slow),
        "Latent (nearest)",
        pytest.param("Latent (nearest-exact)", marks=pytest.mark.slow),
    ],
)
def test_latent_hires_equals_diffusers_two_pipelines(diffusers_parts, tiny_model, samplers, mode):
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]

    def upscale(latents, first_image):
        return F.interpolate(latents, size=(16, 16), mode=interpolation, antialias=antialias)

    expected = diffusers_hires(diffusers_parts, upscale)
    ours = run(tiny_model, samplers, hires_request(mode))
    assert ours.images[0].size == expected.size == (128, 128)
    assert max_pixel_difference(ours.images[0], expected) <= 1


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_lanczos_hires_equals_diffusers_decode_resize_encode(diffusers_parts, tiny_model, samplers, sampler_name):
    def upscale(latents, first_image):
        return first_image.resize((128, 128), Image.Resampling.LANCZOS)

    expected = diffusers_hires(diffusers_parts, upscale, sampler_name)
    ours = run(tiny_model, samplers, hires_request("Lanczos", sampler_name))
    assert max_pixel_difference(ours.images[0], expected) <= 1


def test_latent_modes_give_different_images(tiny_model, samplers):
    """Each mode reaches the second pass (a mode that was ignored would give the same image as another)."""
    a = run(tiny_model, samplers, hires_request("Latent (nearest)")).images[0]
    b = run(tiny_model, samplers, hires_request("Latent (bicubic)")).images[0]
    assert max_pixel_difference(a, b) > 5


# ------------------------------------------------------------------ progress, interrupt, infotext, files


def test_progress_counts_both_passes(tiny_model, samplers):
    seen: list[Progress] = []
    result = run(tiny_model, samplers, hires_request(), progress=seen.append)
    assert seen[-1].decoding  # then the final decode
    seen = [p for p in seen if not p.decoding]
    assert [p.step for p in seen] == list(range(1, FIRST_STEPS + HR_STEPS + 1))
    assert {p.total_steps for p in seen} == {FIRST_STEPS + HR_STEPS}
    assert seen[-1].sampling_step == seen[-1].sampling_steps == FIRST_STEPS + HR_STEPS
    assert result.images[0].size == (128, 128)


def test_interrupt_in_the_second_pass_keeps_the_first_pass_image(tiny_model, samplers):
    control = GenerationControl()

    def on_step(progress: Progress) -> None:
        if progress.step == FIRST_STEPS + 3:  # inside the hires pass
            control.interrupt()

    result = run(tiny_model, samplers, hires_request(), progress=on_step, control=control)
    plain = run(
        tiny_model,
        samplers,
        GenerationRequest(
            prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=FIRST_STEPS, cfg_scale=7.0, seed=SEED
        ),
    )
    assert result.interrupted
    assert result.images[0].size == (64, 64)
    assert max_pixel_difference(result.images[0], plain.images[0]) == 0
    assert "Hires" not in result.infotexts[0]  # it describes the image it is: the first pass


def test_infotext_has_a1111s_hires_keys_and_restores_the_request(tiny_model, samplers, tmp_path):
    request = hires_request("Latent (bicubic)", hr_scale=2, hr_cfg=5.0, hr_prompt="the dog", hr_sampler_name="DDIM")
    result = run(tiny_model, samplers, request, outputs_dir=tmp_path)
    text = read_infotext(result.paths[0])
    assert text == result.infotexts[0]
    params = parse_infotext(text)
    assert params["Size-1"] == "64"  # the first pass's size, as A1111
    assert params["Denoising strength"] == "0.5"
    assert params["Hires upscale"] == "2"
    assert params["Hires steps"] == str(HR_STEPS)
    assert params["Hires upscaler"] == "Latent (bicubic)"
    assert params["Hires sampler"] == "DDIM"
    assert params["Hires CFG Scale"] == "5"
    assert params["Hires prompt"] == "the dog"
    assert "Hires schedule type" not in params  # not set: the first pass's
    restored = request_from_infotext(text)
    assert restored.hires is not None
    again = run(tiny_model, samplers, restored)
    assert max_pixel_difference(again.images[0], result.images[0]) == 0
    assert len(list(tmp_path.rglob("*.png"))) == 1  # the first pass is not saved unless asked


def test_hires_resize_infotext_and_crop(tiny_model, samplers):
    request = hires_request(hr_resize_x=128, hr_resize_y=96)
    result = run(tiny_model, samplers, request)
    assert result.images[0].size == (128, 96)
    params = parse_infotext(result.infotexts[0])
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("128", "96")
    assert "Hires upscale" not in params
    restored = request_from_infotext(result.infotexts[0]).hires
    assert restored is not None and (restored.hr_resize_x, restored.hr_resize_y) == (128, 96)


def test_save_first_pass_saves_both_images(tiny_model, samplers, tmp_path):
    result = run(tiny_model, samplers, hires_request(save_first_pass=True), outputs_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == 2
    sizes = sorted(Image.open(f).size for f in files)
    assert sizes == [(64, 64), (128, 128)]
    first = next(f for f in files if Image.open(f).size == (64, 64))
    assert "Hires" not in (read_infotext(first) or "")
    assert result.paths[0] in files


def test_batch_images_each_use_their_own_seed_in_the_second_pass(tiny_model, samplers):
    request = hires_request()
    request.batch_size = 2
    batch = run(tiny_model, samplers, request)
    single = hires_request()
    single.seed = SEED + 1
    alone = run(tiny_model, samplers, single)
    assert max_pixel_difference(batch.images[1], alone.images[0]) <= 1


@pytest.mark.slow
def test_demo_model_hires_looks_like_the_first_pass_only_sharper(samplers):
    """The bundled demo model: 64 -> 128 px; the result scaled back down is close to the 64 px image."""
    from pathlib import Path

    from webui.models.manager import ModelManager
    from webui.models.registry import load_registry

    registry = load_registry(Path(__file__).resolve().parents[1] / "models.yaml")
    model = ModelManager(registry, torch.device("cpu"), torch.float32).get("demo", download=False)
    base = GenerationRequest(
        prompt="a white star on a red background", steps=8, seed=3, sampler_name="DPM++ 2M", cfg_scale=3
    )
    first = run(model, samplers, base).images[0]
    base.hires = HiresRequest(hr_scale=2, hr_upscaler="Lanczos", denoising_strength=0.35)
    hires = run(model, samplers, base).images[0]
    assert hires.size == (128, 128)
    small = np.asarray(hires.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float32)
    reference = np.asarray(first, dtype=np.float32)
    assert np.abs(small - reference).mean() < 12  # measured 6.4
    # and the second pass changed something (it is not just the upscaled first pass)
    upscaled = np.asarray(first.resize((128, 128), Image.Resampling.LANCZOS), dtype=np.float32)
    assert np.abs(np.asarray(hires, dtype=np.float32) - upscaled).mean() > 1
