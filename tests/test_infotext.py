"""A1111 infotext: format, quoting, parsing, and back to a request."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.pipeline.infotext import format_infotext, parse_infotext, quote, request_from_infotext
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest, ResolvedRequest, resolve_request
from webui.sampling import create_sampler_registry


@pytest.fixture(scope="module")
def samplers():
    return create_sampler_registry()


def resolved(request: GenerationRequest, samplers) -> ResolvedRequest:
    return resolve_request(request, samplers, (512, 512))


def test_format_matches_a1111_layout(samplers):
    request = GenerationRequest(
        prompt="a cat",
        negative_prompt="ugly",
        sampler_name="Euler",
        scheduler="Karras",
        steps=20,
        cfg_scale=7.0,
        width=512,
        height=512,
        seed=965400086,
    )
    text = format_infotext(
        resolved(request, samplers), seed=965400086, model_name="v1-5-pruned-emaonly", model_hash="6ce0161689"
    )
    assert text == (
        "a cat\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, RNG: CPU"
    )


def test_negative_line_omitted_when_empty_and_clip_skip_only_when_above_1(samplers):
    request = GenerationRequest(prompt="p", width=64, height=96, seed=1, cfg_scale=7.5)
    text = format_infotext(resolved(request, samplers), seed=1)
    assert "Negative prompt" not in text and "Clip skip" not in text
    assert "CFG scale: 7.5" in text and "Size: 64x96" in text
    clip_skip_2 = GenerationRequest(prompt="p", width=64, height=64, clip_skip=2)
    text2 = format_infotext(resolved(clip_skip_2, samplers), seed=1)
    assert "Clip skip: 2" in text2


def test_values_with_commas_colons_and_newlines_are_json_quoted_and_read_back(samplers):
    assert quote("plain") == "plain"
    assert quote("a, b") == '"a, b"'
    assert quote('x: "y"') == '"x: \\"y\\""'
    request = GenerationRequest(prompt="p", width=64, height=64)
    text = format_infotext(
        resolved(request, samplers), seed=3, model_name='my, model: "v2"', extra={"Note": "line1\nline2"}
    )
    assert text.count("\n") == 1  # the newline in the value is escaped
    parsed = parse_infotext(text)
    assert parsed["Model"] == 'my, model: "v2"'
    assert parsed["Note"] == "line1\nline2"
    assert parsed["Seed"] == "3"


def test_parse_a1111_example_with_multiline_prompt_and_size_split():
    text = (
        "masterpiece, (a cat:1.2)\nsecond line\nNegative prompt: blurry,\nlowres\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 640x384, "
        "Model hash: 6ce0161689, Model: v1-5, Version: v1.10.1"
    )
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "masterpiece, (a cat:1.2)\nsecond line"
    assert parsed["Negative prompt"] == "blurry,\nlowres"
    assert parsed["Steps"] == "30" and parsed["Sampler"] == "DPM++ 2M" and parsed["CFG scale"] == "6.5"
    assert parsed["Size-1"] == "640" and parsed["Size-2"] == "384"
    assert parsed["Version"] == "v1.10.1"


def test_last_line_with_fewer_than_3_pairs_is_part_of_the_prompt():
    parsed = parse_infotext("a photo\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "a photo\nstyle: oil, mood: calm"
    assert "style" not in parsed


def test_round_trip_to_request(samplers):
    request = GenerationRequest(
        prompt='a "quoted", colon: prompt',
        negative_prompt="bad, worse",
        sampler_name="DDIM",
        scheduler="Karras",
        steps=13,
        cfg_scale=4.5,
        width=320,
        height=192,
        seed=123,
        clip_skip=2,
        sampler_options={"eta": 0.5},
        batch_size=3,
    )
    text = format_infotext(
        resolved(request, samplers), seed=124, model_name="tiny", model_hash="0123456789", batch_pos=1
    )
    back = request_from_infotext(text)
    assert type(back) is GenerationRequest
    assert (back.prompt, back.negative_prompt) == (request.prompt, request.negative_prompt)
    assert (back.sampler_name, back.scheduler, back.steps, back.cfg_scale) == ("DDIM", "Karras", 13, 4.5)
    assert (back.width, back.height, back.seed, back.clip_skip) == (320, 192, 124, 2)
    assert back.sampler_options == {"eta": 0.5}
    assert (back.batch_size, back.n_iter) == (1, 1)


def test_sampler_options_the_request_set_are_written_eta_as_a1111s_eta(samplers):
    ddim = GenerationRequest(prompt="p", sampler_name="DDIM", seed=1, sampler_options={"eta": "0.25"})
    assert format_infotext(resolved(ddim, samplers), seed=1) == (
        "p\nSteps: 20, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, RNG: CPU, "
        "Eta: 0.25"
    )
    euler = GenerationRequest(
        prompt="p", sampler_name="Euler", seed=1, batch_size=2, sampler_options={"s_churn": 1, "eta": 0.5}
    )
    text = format_infotext(resolved(euler, samplers), seed=1, batch_pos=0, version="v1")
    # s_churn converted to its default's type and written after the fixed keys; Euler has no eta: not written
    assert text.endswith("RNG: CPU, Batch size: 2, Batch pos: 0, s_churn: 1.0, Version: v1")
    assert "Eta" not in text and "s_noise" not in text  # options left at their defaults are not written


def test_img2img_round_trip_keeps_base_images_and_reads_denoising_strength(samplers):
    init = Image.new("RGB", (64, 64), "red")
    request = Img2ImgRequest(
        prompt="p",
        width=64,
        height=64,
        seed=5,
        denoising_strength=0.6,
        init_images=[init],
        mask=Image.new("L", (64, 64), 255),
        mask_blur=2,
    )
    text = format_infotext(resolved(request, samplers), seed=5)
    assert "Denoising strength: 0.6" in text and "Mask blur: 2" in text
    back = request_from_infotext(text, base=Img2ImgRequest(init_images=[init]))
    assert isinstance(back, Img2ImgRequest)
    assert back.denoising_strength == 0.6 and back.mask_blur == 2 and back.init_images == [init]
    # a txt2img base ignores img2img-only keys
    assert not hasattr(request_from_infotext(text), "denoising_strength")


@pytest.mark.parametrize("text", ["", "\n\n", "Negative prompt:"])
def test_text_without_parameters_gives_empty_prompts_and_the_default_request(text):
    assert parse_infotext(text) == {"Prompt": "", "Negative prompt": ""}
    assert request_from_infotext(text) == GenerationRequest(prompt="", negative_prompt="")


def test_unreadable_values_are_kept_as_text_and_the_request_falls_back_to_defaults():
    text = "Steps: x, Sampler: , CFG scale: nan-ish, Seed: -"
    parsed = parse_infotext(text)
    assert parsed == {
        "Prompt": "",
        "Negative prompt": "",
        "Steps": "x",
        "Sampler": "",
        "CFG scale": "nan-ish",
        "Seed": "-",
    }
    request = request_from_infotext(parsed)
    default = GenerationRequest()
    assert (request.steps, request.cfg_scale, request.seed) == (default.steps, default.cfg_scale, default.seed)
    # An empty sampler name is a string like any other: it is kept, and validation at submission rejects it.
    assert request.sampler_name == ""


def test_legacy_sampler_names_with_the_schedule_folded_in_are_split():
    text = "p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    back = request_from_infotext(text)
    assert (back.sampler_name, back.scheduler) == ("DPM++ 2M", "Karras")
    plain = request_from_infotext("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    assert (plain.sampler_name, plain.scheduler) == ("Euler a", "Automatic")
