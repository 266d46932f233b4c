"""generate(): seeds, batches, progress, interrupt/skip, img2img/inpainting, input checks (tiny model, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from webui.pipeline import GenerationResult, generate, native_size, resolve_request
from webui.pipeline.errors import InvalidRequest, OutOfMemory
from webui.pipeline.generation import GenerationControl, InpaintDenoiser
from webui.pipeline.images import resize_image
from webui.pipeline.infotext import parse_infotext, request_from_infotext
from webui.pipeline.outputs import read_infotext
from webui.pipeline.preview import fit_latent_preview
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def resolve_and_generate(model, samplers, request: GenerationRequest, **kwargs) -> GenerationResult:
    """What the service does with a request: resolve it for ``model``, then generate."""
    return generate(model, resolve_request(request, samplers, native_size(model)), **kwargs)


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "the cat", "steps": 3, "seed": 7, "sampler_name": "Euler a", **kwargs})


class UNetCalls:
    """Counts UNet forward calls and their batch sizes."""

    def __init__(self, unet):
        self.batches: list[int] = []
        self.handle = unet.register_forward_pre_hook(lambda _m, args: self.batches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_default_size_is_the_models_native_size_and_defaults_are_a1111s(tiny_model, samplers):
    assert GenerationRequest().steps == 20 and GenerationRequest().cfg_scale == 7.0
    result = resolve_and_generate(tiny_model, samplers, req())
    assert result.images[0].size == (64, 64)
    assert result.request.width == 64 and result.request.height == 64


def test_same_request_twice_gives_identical_pixels(tiny_model, samplers):
    a = resolve_and_generate(tiny_model, samplers, req()).images[0]
    b = resolve_and_generate(tiny_model, samplers, req()).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    c = resolve_and_generate(tiny_model, samplers, req(seed=8)).images[0]
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_image_i_equals_a_single_run_with_seed_plus_i(tiny_model, samplers):
    batch = resolve_and_generate(tiny_model, samplers, req(batch_size=2, n_iter=2))
    assert batch.seeds == [7, 8, 9, 10]
    for i in (1, 3):
        single = resolve_and_generate(tiny_model, samplers, req(seed=7 + i)).images[0]
        assert int(np.abs(pixels(batch.images[i]) - pixels(single)).max()) <= 1


def test_random_seed_is_recorded_and_the_infotext_regenerates_the_image(tiny_model, samplers, tmp_path):
    result = resolve_and_generate(
        tiny_model, samplers, req(seed=-1, cfg_scale=5.5, negative_prompt="dog, (cat:1.2)"), outputs_dir=tmp_path
    )
    seed = result.seeds[0]
    assert 0 <= seed < 2**32
    text = read_infotext(result.paths[0])
    assert text == result.infotexts[0]
    assert parse_infotext(text)["Seed"] == str(seed)
    again = resolve_and_generate(tiny_model, samplers, request_from_infotext(text))
    assert np.array_equal(pixels(again.images[0]), pixels(result.images[0]))


def test_cfg_is_one_batched_unet_call_per_step(tiny_model, samplers):
    with UNetCalls(tiny_model.unet) as calls:
        resolve_and_generate(tiny_model, samplers, req(sampler_name="Euler", steps=4, batch_size=2))
    assert calls.batches == [4, 4, 4, 4]  # [uncond; cond] x 2 images, once per step
    with UNetCalls(tiny_model.unet) as calls:
        resolve_and_generate(tiny_model, samplers, req(sampler_name="Euler", steps=2, cfg_scale=1.0))
    assert calls.batches == [1, 1]


@pytest.mark.parametrize(("prompt", "clip_skip"), [("the (cat:1.8) dog", 1), ("the cat dog", 2)])
def test_prompt_weight_and_clip_skip_reach_the_unet_as_its_context(tiny_model, samplers, prompt, clip_skip):
    """Every UNet call is conditioned on [negative; prompt] encoded with the request's weights and clip skip."""
    from webui.pipeline.conditioning import encode_prompt

    contexts: list[torch.Tensor] = []
    hook = tiny_model.unet.register_forward_pre_hook(lambda _m, args: contexts.append(args[2]))
    try:
        resolve_and_generate(tiny_model, samplers, req(prompt=prompt, negative_prompt="dog", clip_skip=clip_skip))
    finally:
        hook.remove()
    encoder = tiny_model.text_encoder
    expected = torch.cat([encode_prompt(encoder, "dog", clip_skip), encode_prompt(encoder, prompt, clip_skip)])
    assert len(contexts) == 3  # one call per step
    for context in contexts:
        torch.testing.assert_close(context, expected, rtol=0, atol=0)
    # The weight (or the skip) really changed the conditioning, so the check above could tell them apart.
    assert (expected[1] - encode_prompt(encoder, "the cat dog")[0]).abs().max() > 0.1


def test_progress_reports_steps_eta_and_a_latent_preview(tiny_model, samplers):
    events = []
    previewer = fit_latent_preview(tiny_model.vae, tiny_model.scale_factor)
    resolve_and_generate(tiny_model, samplers, req(steps=3, n_iter=2), progress=events.append, previewer=previewer)
    # After each batch's last step, the same progress again, marked decoding.
    assert [(p.step, p.decoding) for p in events if p.decoding] == [(3, True), (6, True)]
    events = [p for p in events if not p.decoding]
    assert [(p.step, p.total_steps) for p in events] == [(i, 6) for i in range(1, 7)]
    assert [p.image_index for p in events] == [0, 0, 0, 1, 1, 1]
    assert [p.sampling_step for p in events] == [1, 2, 3, 1, 2, 3]
    assert all(p.eta_seconds is not None and p.eta_seconds >= 0 for p in events)
    assert events[-1].eta_seconds == 0 and events[-1].fraction == 1.0
    assert events[0].preview is not None and events[0].preview.size == (8, 8)


def test_latent_preview_fit_approximates_the_vae(tiny_model):
    previewer = fit_latent_preview(tiny_model.vae, tiny_model.scale_factor)
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(99))
    decoded = torch.nn.functional.adaptive_avg_pool2d(tiny_model.decode(latent), (8, 8))[0]
    approx = torch.from_numpy(pixels(previewer(latent)).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    # better than predicting the mean colour
    assert float((approx - decoded).pow(2).mean()) < float((decoded - decoded.mean((1, 2), keepdim=True)).pow(2).mean())


@pytest.mark.slow
def test_interrupt_during_step_3_of_20_stops_within_one_step_and_keeps_the_current_latent(
    tiny_model, samplers, tmp_path
):
    control = GenerationControl()
    calls_at_interrupt = []

    def on_progress(p):
        if p.image_index == 1 and p.sampling_step == 3:
            control.interrupt()
            calls_at_interrupt.append(len(calls.batches))

    with UNetCalls(tiny_model.unet) as calls:
        result = resolve_and_generate(
            tiny_model,
            samplers,
            req(sampler_name="Euler", steps=20, n_iter=3),
            outputs_dir=tmp_path,
            progress=on_progress,
            control=control,
        )
    assert result.interrupted
    assert len(calls.batches) == calls_at_interrupt[0] == 23  # no UNet call after the interrupt
    # The finished batch, and the interrupted one's image at step 3 (as A1111 keeps its current latent).
    assert result.seeds == [7, 8] and len(result.images) == 2 and len(result.paths) == 2
    assert "Interrupted" not in result.infotexts[0]
    assert result.infotexts[1].endswith("Interrupted: step 3/20")
    with Image.open(result.paths[1]) as saved:
        saved.load()
        assert saved.size == (64, 64) and "Seed: 8" in saved.info["parameters"]
        parsed = parse_infotext(saved.info["parameters"])
    assert parsed["Interrupted"] == "step 3/20" and parsed["Seed"] == "8" and parsed["Steps"] == "20"
    assert sorted(p.name for p in result.paths[0].parent.iterdir()) == sorted(p.name for p in result.paths)
    # The kept image is the decoded x0 estimate of step 3: not the finished image of seed 8.
    full = resolve_and_generate(tiny_model, samplers, req(sampler_name="Euler", steps=20, seed=8))
    assert np.abs(pixels(result.images[1]) - pixels(full.images[0])).max() > 0


def test_progress_says_decoding_before_each_batch_is_decoded_and_after_an_interrupt(tiny_model, samplers, monkeypatch):
    """At 1024 px the VAE's decode takes longer than a step: the status must be able to say what runs."""
    control = GenerationControl()
    events: list[tuple[str, int, int]] = []
    decode = tiny_model.decode

    def recording_decode(z, report=None):
        events.append(("decode", -1, -1))
        return decode(z, report)

    def on_progress(p):
        events.append(("decoding" if p.decoding else "step", p.image_index, p.sampling_step))
        if p.image_index == 1 and p.sampling_step == 2:
            control.interrupt()

    monkeypatch.setattr(tiny_model, "decode", recording_decode)
    result = resolve_and_generate(
        tiny_model, samplers, req(sampler_name="Euler", steps=3, n_iter=3), progress=on_progress, control=control
    )
    assert result.interrupted and len(result.images) == 2
    assert events == [
        *[("step", 0, s) for s in (1, 2, 3)],
        ("decoding", 0, 3),
        ("decode", -1, -1),
        *[("step", 1, s) for s in (1, 2)],
        ("decoding", 1, 2),  # the kept image of the interrupted batch
        ("decode", -1, -1),
    ]


def test_progress_says_how_much_of_a_banded_decode_is_done(tiny_model, samplers, monkeypatch):
    """A large image is decoded in bands (minutes at 2048 px on a CPU): the progress says how far it is."""
    monkeypatch.setattr(tiny_model, "vae_tiling", "on")
    events = []
    # 576 px is wider than the VAE's 512 px tile, so "on" decodes in bands; two images in the batch
    result = resolve_and_generate(
        tiny_model, samplers, req(steps=2, width=576, height=64, batch_size=2), progress=events.append
    )
    assert len(result.images) == 2
    decoding = [p for p in events if p.decoding]
    assert decoding[0].decoded is None and decoding[0].step == 2  # announced before the VAE starts
    fractions = [p.decoded for p in decoding[1:]]
    assert len(fractions) > 4 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert pytest.approx(0.5) in fractions  # the first of the two images is done halfway
    assert all(p.step == 2 and p.image_index == 0 for p in decoding)


def test_interrupt_inside_a_unet_step_stops_before_the_next_block(tiny_model, samplers):
    """The stop flag is checked between UNet blocks: a click during a long step acts within one block."""
    from webui.pipeline.generation import unet_blocks

    control = GenerationControl()
    blocks = unet_blocks(tiny_model.unet)
    ran: list[int] = []
    # Forward (post) hooks: ``ran`` lists the blocks that completed.
    handles = [b.register_forward_hook(lambda _m, _a, _o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    middle = len(blocks) // 2

    def click_during_step_3(_module, _args, _output):
        if len(ran) > 2 * len(blocks):  # the third UNet call is under way
            control.interrupt()

    handles.append(blocks[middle].register_forward_hook(click_during_step_3))
    try:
        result = resolve_and_generate(tiny_model, samplers, req(sampler_name="Euler", steps=8), control=control)
    finally:
        for h in handles:
            h.remove()
    assert result.interrupted
    # Step 3 stopped right after the block that saw the click: the next block never started.
    assert ran[-1] == middle and len(ran) == 2 * len(blocks) + middle + 1
    assert result.infotexts[0].endswith("Interrupted: step 2/8") and len(result.images) == 1
    # The hooks are gone after the job: the model is untouched.
    assert all(not b._forward_pre_hooks for b in blocks)


def test_interrupt_from_another_thread_acts_within_a_fraction_of_a_slow_step(tiny_model, samplers):
    import threading
    import time

    from webui.pipeline.generation import unet_blocks

    control = GenerationControl()
    blocks = unet_blocks(tiny_model.unet)
    per_block = 0.05  # each step takes len(blocks) * 50 ms
    step_seconds = per_block * len(blocks)
    calls = 0
    under_way = threading.Event()

    def slow_block(_module, _args):
        nonlocal calls
        calls += 1
        if calls == 2 * len(blocks) + len(blocks) // 2:  # mid-UNet, after at least one whole step
            under_way.set()
        time.sleep(per_block)

    handles = [b.register_forward_pre_hook(slow_block) for b in blocks]
    clicked: list[float] = []

    def click():
        # Counted in UNet blocks, not seconds from now: on a loaded machine the text encoder alone can take
        # longer than a step, and a click before the first step ends leaves no image to keep.
        under_way.wait(timeout=120)
        clicked.append(time.monotonic())
        control.interrupt()

    thread = threading.Thread(target=click)
    try:
        thread.start()
        result = resolve_and_generate(tiny_model, samplers, req(sampler_name="Euler", steps=8), control=control)
        returned = time.monotonic()
    finally:
        thread.join()
        for h in handles:
            h.remove()
    assert result.interrupted and len(result.images) == 1
    assert returned - clicked[0] < step_seconds / 2, (returned - clicked[0], step_seconds)


def test_a_long_attention_is_split_into_query_chunks_that_an_interrupt_can_stop_between(monkeypatch):
    """At 1024 px on the demo model one self-attention was a single ~20 s kernel call with no hook inside:
    an interrupt waited for it. Above ATTENTION_CHUNK_SCORES the queries go in chunks, each through to_q
    (a hooked module), with the same result."""
    from webui.models import unet as unet_module
    from webui.pipeline.generation import stop_between_blocks
    from webui.sampling import SamplingCancelled

    torch.manual_seed(0)
    attention = unet_module.Attention(query_dim=32, context_dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(2, 100, 32)  # 100 tokens: 2 x 4 x 100 x 100 = 80000 scores
    with torch.no_grad():
        whole = attention(x)
    monkeypatch.setattr(unet_module, "ATTENTION_CHUNK_SCORES", 2 * 4 * 100 * 30)  # 30 queries a chunk
    calls: list[int] = []
    handle = attention.to_q.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[1]))
    with torch.no_grad():
        chunked = attention(x)
    handle.remove()
    assert calls == [30, 30, 30, 10]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)

    # A stop during the second chunk stops the attention before its third chunk.
    flag = iter([False, False, True])
    with stop_between_blocks([attention.to_q], lambda: next(flag)), pytest.raises(SamplingCancelled):
        attention(x)


def test_skip_abandons_the_current_batch_and_goes_on(tiny_model, samplers):
    control = GenerationControl()

    def on_progress(p):
        if p.image_index == 0 and p.sampling_step == 1:
            control.skip()

    result = resolve_and_generate(tiny_model, samplers, req(n_iter=2), progress=on_progress, control=control)
    assert not result.interrupted
    assert result.seeds == [8]


def test_img2img_resize_modes_give_the_requested_size(tiny_model, samplers):
    init = Image.new("RGB", (96, 48), (200, 30, 30))
    for mode in range(3):
        result = resolve_and_generate(
            tiny_model,
            samplers,
            Img2ImgRequest(prompt="p", steps=2, seed=1, init_images=[init], resize_mode=mode, width=64, height=64),
        )
        assert result.images[0].size == (64, 64)
    assert "Denoising strength: 0.75" in result.infotexts[0]


def test_resize_image_crop_and_fill_follow_a1111():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 50))  # a blue left edge
    crop = resize_image(image, 50, 50, 1)
    assert crop.size == (50, 50) and crop.getpixel((0, 25)) == (255, 0, 0)  # the blue edge is cropped away
    fill = resize_image(image, 50, 50, 2)
    assert fill.size == (50, 50)
    assert fill.getpixel((25, 0)) != (0, 0, 0) and fill.getpixel((25, 49)) != (0, 0, 0)  # bands filled


def test_inpainting_keeps_original_pixels_outside_the_mask(tiny_model, samplers, tmp_path):
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", (32, 32), 0)  # another size than the image: resized to it
    mask.paste(255, (0, 0, 16, 32))  # repaint the left half
    for fill in range(4):
        result = resolve_and_generate(
            tiny_model,
            samplers,
            Img2ImgRequest(
                prompt="p",
                steps=3,
                seed=3,
                init_images=[init],
                mask=mask,
                mask_blur=0,
                inpainting_fill=fill,
                denoising_strength=1.0,
            ),
            outputs_dir=tmp_path,
        )
        out = pixels(result.images[0])
        # (the half-size mask is resized bilinearly: columns 31-32 straddle the edge)
        assert np.array_equal(out[:, 33:], pixels(init)[:, 33:])
        assert np.abs(out[:, :31] - pixels(init)[:, :31]).max() > 10
    assert "Mask blur: 0" in result.infotexts[0]
    inverted = resolve_and_generate(
        tiny_model,
        samplers,
        Img2ImgRequest(
            prompt="p", steps=3, seed=3, init_images=[init], mask=mask, mask_blur=0, inpainting_mask_invert=1
        ),
    )
    assert np.array_equal(pixels(inverted.images[0])[:, :31], pixels(init)[:, :31])


def test_inpaint_denoiser_keeps_the_unmasked_latent_on_the_renoised_original():
    init = torch.randn(1, 4, 4, 4)
    noise = torch.randn(1, 4, 4, 4)
    repaint = torch.zeros(1, 1, 4, 4)
    repaint[..., :2] = 1
    seen = []

    def inner(x, sigma, **_):
        seen.append(x.clone())
        return torch.zeros_like(x)

    wrapped = InpaintDenoiser(inner, init, noise, repaint)
    x = torch.randn(1, 4, 4, 4) * 5
    denoised = wrapped(x, torch.tensor([2.0]), timestep=None)
    torch.testing.assert_close(seen[0][..., 2:], (init + 2.0 * noise)[..., 2:])
    torch.testing.assert_close(seen[0][..., :2], x[..., :2])
    torch.testing.assert_close(denoised[..., 2:], init[..., 2:])
    assert float(denoised[..., :2].abs().max()) == 0


BAD_REQUESTS = [
    (req(width=100), "width"),
    (req(width=56), "width"),
    (req(height=2056), "height"),
    (req(steps=0), "steps"),
    (req(steps=151), "steps"),
    (req(steps=2.5), "steps"),
    (req(cfg_scale=-1), "cfg_scale"),
    (req(cfg_scale=31), "cfg_scale"),
    (req(cfg_scale=math.nan), "cfg_scale"),
    (req(cfg_scale=math.inf), "cfg_scale"),
    (req(seed=-2), "seed"),
    (req(batch_size=0), "batch_size"),
    (req(prompt=None), "prompt"),
    (req(sampler_name="No such sampler"), "sampler_name"),
    (req(scheduler="Nope"), "scheduler"),
    (req(sampler_options={"eta": math.nan}), "eta"),
    (Img2ImgRequest(init_images=[]), "init_images"),
    (Img2ImgRequest(init_images=[b"not an image"]), "init_images"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], denoising_strength=1.5), "denoising_strength"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], denoising_strength=math.nan), "denoising_strength"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], mask="mask.png"), "mask"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], resize_mode=7), "resize_mode"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], inpainting_fill=4), "inpainting_fill"),
]


def _truncated_png() -> Image.Image:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[:60]))


BAD_REQUESTS += [
    (Img2ImgRequest(init_images=[_truncated_png()]), "init_images"),
    (Img2ImgRequest(init_images=[Image.new("RGB", (8, 8))], mask=_truncated_png()), "mask"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
def test_bad_input_raises_invalid_request_naming_the_field_and_writes_nothing(
    tiny_model, samplers, tmp_path, request_, field
):
    with UNetCalls(tiny_model.unet) as calls, pytest.raises(InvalidRequest) as info:
        resolve_and_generate(tiny_model, samplers, request_, outputs_dir=tmp_path)
    assert info.value.field == field
    assert calls.batches == []
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_names_what_to_lower_and_writes_nothing(tiny_model, samplers, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_model.unet, "forward", oom)
    with pytest.raises(OutOfMemory) as info:
        resolve_and_generate(tiny_model, samplers, req(batch_size=4), outputs_dir=tmp_path)
    assert isinstance(info.value, InvalidRequest) and info.value.field == "batch_size"
    assert "lower the batch size" in str(info.value)
    assert list(tmp_path.rglob("*.png")) == []
    monkeypatch.undo()
    assert resolve_and_generate(tiny_model, samplers, req()).images  # the next request works


def test_mask_from_luminance_or_from_the_alpha_of_brush_strokes():
    from webui.pipeline.images import prepare_mask

    opaque = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (0, 0, 8, 16))
    strokes = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    strokes.paste((0, 0, 0, 255), (0, 0, 8, 16))  # black paint, opaque where painted
    for mask in (opaque, strokes):
        out = prepare_mask(mask, (16, 16), 16, 16, resize_mode=0, blur=0, invert=False)
        assert out.mode == "L" and out.getpixel((2, 8)) == 255 and out.getpixel((13, 8)) == 0


def test_result_info_is_a1111_shaped(tiny_model, samplers):
    result = resolve_and_generate(tiny_model, samplers, req(batch_size=2, seed=11))
    info = result.info
    assert info["seed"] == 11 and info["all_seeds"] == [11, 12]
    assert info["all_prompts"] == ["the cat", "the cat"] and info["infotexts"] == result.infotexts
    assert info["width"] == 64 and info["sd_model_hash"] == tiny_model.short_hash
    assert info["denoising_strength"] is None and not info["interrupted"]


def test_prompt_editing_changes_the_unet_context_mid_generation(tiny_model, samplers):
    contexts = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda _m, args: contexts.append(args[2][1].clone()))
    try:
        resolve_and_generate(tiny_model, samplers, req(prompt="[the cat:dog:2]", sampler_name="Euler", steps=4))
    finally:
        handle.remove()
    assert len(contexts) == 4  # [uncond; cond] per step: args[2][1] is the cond context
    assert torch.equal(contexts[0], contexts[2]) and not torch.equal(contexts[2], contexts[3])


def test_prompt_editing_works_with_a_sampler_that_never_calls_the_callback(tiny_model, samplers):
    """The step that picks the edited prompt comes from the sigma of each model call, not from progress callbacks."""
    from samplers.euler import sample_euler
    from webui.sampling import Sampler, SamplerRegistry

    def sample_silent_euler(model, x, sigmas, *, generator, callback=None):
        return sample_euler(model, x, sigmas, generator=generator)  # the same steps, no callback

    silent = Sampler(name="Silent Euler", function=sample_silent_euler)
    with_silent = SamplerRegistry(samplers=[*samplers.samplers, silent])

    def run(prompt: str, sampler: str) -> tuple[np.ndarray, list[torch.Tensor]]:
        contexts: list[torch.Tensor] = []
        handle = tiny_model.unet.register_forward_pre_hook(lambda _m, args: contexts.append(args[2][1].clone()))
        try:
            image = resolve_and_generate(tiny_model, with_silent, req(prompt=prompt, sampler_name=sampler, steps=4))
        finally:
            handle.remove()
        return pixels(image.images[0]), contexts

    edited, edited_contexts = run("[the cat:dog:0.5]", "Silent Euler")
    reference, reference_contexts = run("[the cat:dog:0.5]", "Euler")  # Euler reports every step
    before, _ = run("the cat", "Silent Euler")
    after, _ = run("dog", "Silent Euler")
    cat, dog = edited_contexts[0], edited_contexts[3]  # A1111: [a:b:0.5] of 4 steps is a for steps 0-2, b for 3
    assert torch.equal(edited_contexts[2], cat) and not torch.equal(cat, dog)
    assert all(torch.equal(a, b) for a, b in zip(edited_contexts, reference_contexts, strict=True))
    assert np.array_equal(edited, reference)
    assert not np.array_equal(edited, before) and not np.array_equal(edited, after)
