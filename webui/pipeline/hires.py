"""Hires fix (AUTOMATIC1111's txt2img "Hires. fix"): sample at the native size, upscale, then a second img2img pass.

SD 1.x draws at 512 px; asked for 1024 px directly it repeats limbs and faces. Hires fix samples the composition at
the requested (native) size, upscales it to the target size, either the latents themselves with
``torch.nn.functional.interpolate`` (the ``Latent ...`` modes) or the decoded image through an image upscaler (decode,
upscale, encode), and then runs a second img2img pass at the target size.

The second pass follows A1111 1.10's step rule for a given number of steps ``N``
(``sd_samplers_common.setup_img2img_steps`` with ``img2img_fix_steps``): a schedule of
``int(N / min(d, 0.999))`` steps for denoising strength ``d``, sampled from index ``total - N`` on, so that exactly
``N`` steps run and the strength sets where on the schedule they start. Its noise is drawn like a first pass at the
new size: from new CPU generators seeded with each image's seed. With an image upscaler the encoder's sample is
their first draw and the noise the second, as diffusers' ``StableDiffusionImg2ImgPipeline`` does with a generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from webui.pipeline.errors import InvalidRequest
from webui.sampling import ScheduleType
from webui.upscalers import Upscaler, UpscalerRegistry, upscale_to
from webui.upscalers.tiling import UpscaleCancelled

if TYPE_CHECKING:
    from webui.pipeline.requests import ResolvedRequest
    from webui.sampling import Sampler, SamplerRegistry

# AUTOMATIC1111's latent upscale modes: name -> (torch interpolation mode, antialias).
LATENT_UPSCALE_MODES: Mapping[str, tuple[str, bool]] = MappingProxyType(
    {
        "Latent": ("bilinear", False),
        "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False),
        "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False),
        "Latent (nearest-exact)": ("nearest-exact", False),
    }
)
DEFAULT_HR_UPSCALER = "Latent"
# What A1111's UI sends for "the first pass's" sampler and schedule; empty text means the same.
USE_SAME_SAMPLER, USE_SAME_SCHEDULER = "Use same sampler", "Use same scheduler"
MAX_HR_SCALE = 8.0
# Longest schedule the second pass may sample a part of: int(N / d) steps, so d >= N / 1000.
MAX_SCHEDULE_STEPS = 1000
LATENT_DOWNSCALE = 8


@dataclass
class HiresRequest:
    """The hires-fix fields of a txt2img request, with A1111's names and defaults (``enable_hr`` is its presence).

    ``hr_resize_x``/``hr_resize_y`` 0 use ``hr_scale``; one of them set keeps the aspect ratio; both set crop to
    that size. ``hr_second_pass_steps`` 0 runs ``steps``. Empty sampler, schedule, prompts and ``hr_cfg`` None
    take the first pass's. ``save_first_pass`` also saves the image before the second pass (A1111's
    ``save_images_before_highres_fix``).
    """

    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = DEFAULT_HR_UPSCALER
    hr_second_pass_steps: int = 0
    denoising_strength: float = 0.7
    hr_sampler_name: str = ""
    hr_scheduler: str = ""
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = None
    save_first_pass: bool = False


@dataclass(frozen=True)
class ResolvedHires:
    """A checked hires request: sizes computed, names looked up, the first pass's values filled in.

    ``upscale_width``/``upscale_height`` is what the upscaler produces; ``width``/``height`` the final image
    after the centred crop of ``truncate_x``/``truncate_y`` pixels (both resize values given; multiples of 8).
    ``given`` is the request that was resolved (the infotext writes what it set).
    """

    given: HiresRequest
    upscaler_name: str
    latent_mode: tuple[str, bool] | None  # None: an image upscaler
    upscaler: Upscaler | None
    upscale_width: int
    upscale_height: int
    truncate_x: int
    truncate_y: int
    steps: int  # N, the steps that run
    denoising_strength: float
    sampler: Sampler
    scheduler: str
    sampler_options: Mapping[str, Any]
    # ``scheduler`` as ``sample()`` takes it: the core name, or a plugin's ScheduleType (issue 18).
    prompt: str
    negative_prompt: str
    cfg_scale: float
    schedule_type: str | ScheduleType = ""

    @property
    def width(self) -> int:
        return self.upscale_width - self.truncate_x

    @property
    def height(self) -> int:
        return self.upscale_height - self.truncate_y

    @property
    def schedule(self) -> tuple[int, float]:
        """``(schedule steps, strength)`` for :func:`webui.sampling.sample` (see :func:`second_pass_schedule`)."""
        return second_pass_schedule(self.steps, self.denoising_strength)

    @property
    def sampling_steps(self) -> int:
        """Steps the second pass samples: ``steps``, or none at strength 0."""
        return self.steps if self.denoising_strength > 0 else 0


def second_pass_schedule(steps: int, denoising_strength: float) -> tuple[int, float]:
    """A1111's rule as ``(schedule steps, strength for img2img_start)``: ``int(N / min(d, 0.999))`` steps, of which
    the last ``N`` run. The returned strength makes :func:`webui.sampling.driver.img2img_start` start at index
    ``total - N`` exactly (``int(total * (N + 0.5) / total) == N`` whatever the rounding); ``(0, 0.0)`` at d = 0.
    """
    if denoising_strength <= 0:
        return 0, 0.0
    total = int(steps / min(denoising_strength, 0.999))
    return total, min((steps + 0.5) / total, 1.0)


def hires_target(width: int, height: int, hires: HiresRequest) -> tuple[int, int, int, int]:
    """``(upscale_width, upscale_height, truncate_x, truncate_y)`` as A1111's ``init`` of txt2img computes them.

    Sizes are brought down to a multiple of 8 (SD's latent grid); A1111 counts the truncation in latent pixels,
    here it is in image pixels (8 per latent pixel), so that models with another VAE factor crop the same.
    """
    rx, ry = hires.hr_resize_x, hires.hr_resize_y
    truncate_x = truncate_y = 0
    if rx == 0 and ry == 0:
        to_x, to_y = int(width * hires.hr_scale), int(height * hires.hr_scale)
    elif ry == 0:
        to_x, to_y = rx, rx * height // width
    elif rx == 0:
        to_x, to_y = ry * width // height, ry
    elif width / height < rx / ry:
        to_x, to_y = rx, rx * height // width
        truncate_y = (to_y - ry) // LATENT_DOWNSCALE * LATENT_DOWNSCALE
    else:
        to_x, to_y = ry * width // height, ry
        truncate_x = (to_x - rx) // LATENT_DOWNSCALE * LATENT_DOWNSCALE
    down = LATENT_DOWNSCALE
    return to_x // down * down, to_y // down * down, truncate_x, truncate_y


def check_hires(hires: HiresRequest, steps_limit: int) -> HiresRequest:
    """``hires`` with whole-number floats made ints; InvalidRequest naming the first bad field."""
    from webui.pipeline.requests import _number, _text, _whole

    if not isinstance(hires, HiresRequest):
        raise InvalidRequest("enable_hr", f"expected hires settings, got {type(hires).__name__}")
    for name in ("hr_upscaler", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"):
        _text(name, getattr(hires, name))
    cfg = hires.hr_cfg
    return HiresRequest(
        hr_scale=_number("hr_scale", hires.hr_scale, 1.0, MAX_HR_SCALE),
        hr_resize_x=_whole("hr_resize_x", hires.hr_resize_x, 0, 10**6),
        hr_resize_y=_whole("hr_resize_y", hires.hr_resize_y, 0, 10**6),
        hr_upscaler=hires.hr_upscaler,
        hr_second_pass_steps=_whole("hr_second_pass_steps", hires.hr_second_pass_steps, 0, steps_limit),
        denoising_strength=_number("denoising_strength", hires.denoising_strength, 0.0, 1.0),
        hr_sampler_name=hires.hr_sampler_name,
        hr_scheduler=hires.hr_scheduler,
        hr_prompt=hires.hr_prompt,
        hr_negative_prompt=hires.hr_negative_prompt,
        hr_cfg=None if cfg is None else _number("hr_cfg", cfg, 0.0, 30.0),
        save_first_pass=bool(hires.save_first_pass),
    )


def resolve_hires(
    hires: HiresRequest,
    first: ResolvedRequest,
    samplers: SamplerRegistry,
    upscalers: UpscalerRegistry | None,
) -> ResolvedHires:
    """Check ``hires`` against the resolved first pass ``first``; InvalidRequest naming the first bad field."""
    from webui.pipeline.requests import MAX_SIZE, MAX_STEPS, MIN_SIZE
    from webui.sampling.driver import sampler_options

    hires = check_hires(hires, MAX_STEPS)
    name, latent_mode, upscaler = _upscaler(hires.hr_upscaler, upscalers or UpscalerRegistry())
    up_w, up_h, tx, ty = hires_target(first.width, first.height, hires)
    field = "hr_scale" if hires.hr_resize_x == 0 and hires.hr_resize_y == 0 else "hr_resize_x"
    final = (up_w - tx, up_h - ty)
    if max(up_w, up_h) > MAX_SIZE or min(final) < MIN_SIZE:
        raise InvalidRequest(
            field,
            f"the hires size {up_w}x{up_h} is outside the generation limits ({MIN_SIZE} to {MAX_SIZE} px a side)",
        )
    steps = hires.hr_second_pass_steps or first.steps
    total, _ = second_pass_schedule(steps, hires.denoising_strength)
    if total > MAX_SCHEDULE_STEPS:
        raise InvalidRequest(
            "denoising_strength",
            f"{hires.denoising_strength:g} is too low for {steps} hires steps (at least {steps / 1000:g}: the second "
            f"pass samples the last {steps} of int({steps} / strength) <= {MAX_SCHEDULE_STEPS} steps)",
        )
    sampler: Sampler = first.sampler
    options = dict(first.sampler_options)
    if hires.hr_sampler_name not in ("", USE_SAME_SAMPLER):
        try:
            hr_sampler = samplers.get(hires.hr_sampler_name)
        except (KeyError, ValueError) as err:
            raise InvalidRequest("hr_sampler_name", str(err)) from None
        if hr_sampler.name != sampler.name:
            sampler, options = hr_sampler, sampler_options(hr_sampler, None)
    scheduler, schedule_type = first.scheduler, first.schedule_type or first.scheduler
    if hires.hr_scheduler not in ("", USE_SAME_SCHEDULER):
        try:
            schedule_type = samplers.schedule(hires.hr_scheduler)
        except ValueError as err:
            raise InvalidRequest("hr_scheduler", str(err)) from None
        scheduler = schedule_type.name if isinstance(schedule_type, ScheduleType) else schedule_type
    if not sampler.supports(scheduler):
        raise InvalidRequest(
            "hr_scheduler",
            f"sampler {sampler.name!r} supports {', '.join(sampler.schedules or ())}, not {scheduler!r}",
        )
    return ResolvedHires(
        given=hires,
        upscaler_name=name,
        latent_mode=latent_mode,
        upscaler=upscaler,
        upscale_width=up_w,
        upscale_height=up_h,
        truncate_x=tx,
        truncate_y=ty,
        steps=steps,
        denoising_strength=hires.denoising_strength,
        sampler=sampler,
        scheduler=scheduler,
        schedule_type=schedule_type,
        sampler_options=MappingProxyType(options),
        prompt=hires.hr_prompt or first.prompt,
        negative_prompt=hires.hr_negative_prompt or first.negative_prompt,
        cfg_scale=hires.hr_cfg if hires.hr_cfg is not None else first.cfg_scale,
    )


def _upscaler(name: str, upscalers: UpscalerRegistry) -> tuple[str, tuple[str, bool] | None, Upscaler | None]:
    for mode_name, mode in LATENT_UPSCALE_MODES.items():
        if mode_name.lower() == name.lower():
            return mode_name, mode, None
    try:
        upscaler = upscalers.get(name)
    except KeyError:
        names = [*LATENT_UPSCALE_MODES, *upscalers.names]
        raise InvalidRequest("hr_upscaler", f"unknown upscaler {name!r}; available: {', '.join(names)}") from None
    reason = upscalers.unavailable_reason(upscaler)
    if reason is not None:
        raise InvalidRequest("hr_upscaler", f"{upscaler.name}: {reason}")
    return upscaler.name, None, upscaler


def upscale_latents(latents: torch.Tensor, mode: tuple[str, bool], size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size) by A1111's latent mode ``(interpolation, antialias)``."""
    return F.interpolate(latents, size=size, mode=mode[0], antialias=mode[1])


def crop_latents(latents: torch.Tensor, truncate_x: int, truncate_y: int) -> torch.Tensor:
    """A1111's centred crop of ``truncate`` latent pixels (the extra one on the far side)."""
    h, w = latents.shape[-2:]
    return latents[..., truncate_y // 2 : h - (truncate_y + 1) // 2, truncate_x // 2 : w - (truncate_x + 1) // 2]


def infotext_params(hires: ResolvedHires, first: ResolvedRequest) -> dict[str, Any]:
    """A1111's hires keys of the infotext, in its order; only what the request set beyond the defaults."""
    from webui.pipeline.infotext import _number

    given = hires.given
    params: dict[str, Any] = {"Denoising strength": _number(hires.denoising_strength)}
    if hires.prompt != first.prompt:
        params["Hires prompt"] = hires.prompt
    if hires.negative_prompt != first.negative_prompt:
        params["Hires negative prompt"] = hires.negative_prompt
    if hires.sampler.name != first.sampler.name:
        params["Hires sampler"] = hires.sampler.name
    if hires.scheduler != first.scheduler:
        params["Hires schedule type"] = hires.scheduler
    if hires.cfg_scale != first.cfg_scale:
        params["Hires CFG Scale"] = _number(hires.cfg_scale)
    if given.hr_resize_x == 0 and given.hr_resize_y == 0:
        params["Hires upscale"] = _number(given.hr_scale)
    else:
        params["Hires resize"] = f"{given.hr_resize_x}x{given.hr_resize_y}"
    if given.hr_second_pass_steps:
        params["Hires steps"] = given.hr_second_pass_steps
    params["Hires upscaler"] = hires.upscaler_name
    return params


def hires_from_infotext(params: Mapping[str, str]) -> HiresRequest | None:
    """The hires settings a parsed infotext describes (A1111 turns hires fix on when it has ``Hires upscale`` or
    ``Hires resize``); None when it has neither. Values that do not convert keep their defaults."""
    if "Hires upscale" not in params and "Hires resize-1" not in params:
        return None
    hires = HiresRequest()
    conversions: dict[str, tuple[str, Callable[[str], Any]]] = {
        "Hires upscale": ("hr_scale", float),
        "Hires resize-1": ("hr_resize_x", int),
        "Hires resize-2": ("hr_resize_y", int),
        "Hires upscaler": ("hr_upscaler", str),
        "Hires steps": ("hr_second_pass_steps", int),
        "Denoising strength": ("denoising_strength", float),
        "Hires sampler": ("hr_sampler_name", str),
        "Hires schedule type": ("hr_scheduler", str),
        "Hires prompt": ("hr_prompt", str),
        "Hires negative prompt": ("hr_negative_prompt", str),
        "Hires CFG Scale": ("hr_cfg", float),
    }
    for key, (name, convert) in conversions.items():
        if key in params:
            try:
                setattr(hires, name, convert(params[key]))
            except ValueError:
                pass
    return hires


@dataclass
class SecondPassOutput:
    latents: torch.Tensor  # the final latents at the hires size
    first_images: list[Image.Image] | None  # the decoded first pass, when it was decoded (image upscalers)


class HiresPass:
    """The second pass of one request: its guided eps function is built once, then :meth:`run` per batch."""

    def __init__(self, model: Any, request: ResolvedRequest, device: torch.device):
        from webui.pipeline.conditioning import encode_conditioning
        from webui.pipeline.generation import cfg_eps_fn

        assert request.hires is not None
        hires = request.hires
        self.model, self.hires, self.device = model, hires, device
        conditioning = encode_conditioning(
            model.text_encoder, hires.prompt, hires.negative_prompt, request.clip_skip, hires.steps
        )
        self.eps_fn = cfg_eps_fn(model.unet, conditioning.to(device), hires.cfg_scale)
        self.alphas_cumprod = model.alphas_cumprod.to(device)

    def run(
        self,
        latents: torch.Tensor,
        seeds: list[int],
        cancel: Callable[[], bool],
        callback: Callable[[dict[str, Any]], None] | None,
        *,
        keep_first_images: bool = False,
    ) -> SecondPassOutput:
        """Upscale the first pass's ``latents`` and sample the second pass; raises ``SamplingCancelled``."""
        from webui.pipeline.generation import decode_latents, encode_images
        from webui.pipeline.images import image_to_tensor
        from webui.pipeline.seeds import image_generators, initial_noise
        from webui.sampling import DiscreteEpsDenoiser, SamplingCancelled, sample

        hires = self.hires
        generators = image_generators(seeds)
        first_images = None
        down = self.model.vae.config.downscale  # image pixels per latent pixel (8 for SD 1.x)
        if hires.latent_mode is not None:
            size = (hires.upscale_height // down, hires.upscale_width // down)
            init = upscale_latents(latents, hires.latent_mode, size)
            if keep_first_images:
                first_images = decode_latents(self.model, latents)
        else:
            assert hires.upscaler is not None
            first_images = decode_latents(self.model, latents)
            try:
                upscaled = [
                    upscale_to(hires.upscaler, image, hires.upscale_width, hires.upscale_height, cancel)
                    for image in first_images
                ]
            except UpscaleCancelled:
                raise SamplingCancelled("cancelled while upscaling") from None
            pixels = torch.cat([image_to_tensor(image) for image in upscaled])
            # The encoder's sample is each generator's first draw, the noise its second (as diffusers' img2img).
            init = encode_images(self.model, pixels, generators).to(self.device)
        init = crop_latents(init, hires.truncate_x // down, hires.truncate_y // down)
        noise = initial_noise(tuple(init.shape[1:]), generators, self.device)
        total, strength = hires.schedule
        if total == 0:
            return SecondPassOutput(init, first_images)
        with torch.no_grad():
            out = sample(
                hires.sampler,
                DiscreteEpsDenoiser(self.eps_fn, self.alphas_cumprod),
                noise,
                steps=total,
                schedule=hires.schedule_type or hires.scheduler,
                alphas_cumprod=self.alphas_cumprod,
                generator=generators,
                init_latent=init,
                denoising_strength=strength,
                callback=callback,
                cancel=cancel,
                options=hires.sampler_options,
            )
        return SecondPassOutput(out, first_images)
