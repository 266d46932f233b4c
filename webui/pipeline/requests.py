"""Typed generation requests and results, with AUTOMATIC1111's field names and defaults.

A request is plain data: the UI builds one from its widgets, the API from JSON, and
:func:`webui.pipeline.infotext.request_from_infotext` from a PNG's ``parameters`` chunk. It may leave
things open (``width=None``: the model's native size, ``seed=-1``: a random seed, a sampler alias, a
lower-case schedule name, only some sampler options).

:func:`resolve_request` is the one step between the two: when a job is submitted it checks every
field (:class:`InvalidRequest` names the first bad one, before anything is computed or written;
the request itself is never changed) and decides everything that was left open, giving an
immutable :class:`ResolvedRequest`. Generation, infotexts and ``GenerationResult.info`` read only
that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.extra_networks.lora_merge import LoraUse
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.hires import HiresRequest, ResolvedHires, resolve_hires
from webui.pipeline.script_plan import ScriptPlan
from webui.pipeline.seeds import resolve_seed
from webui.pipeline.speedups import REQUEST_FIELDS as SPEEDUP_FIELDS
from webui.pipeline.speedups import Speedups
from webui.sampling import Sampler, SamplerRegistry, ScheduleType
from webui.sampling.driver import img2img_start, sampler_options
from webui.upscalers import UpscalerRegistry

if TYPE_CHECKING:
    from webui.extra_networks.lora_library import LoraLibrary

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 150
MAX_CFG_SCALE = 30.0
MAX_BATCH_SIZE = 8
MAX_N_ITER = 100
MAX_CLIP_SKIP = 12
# Random seeds are below 2**32 like AUTOMATIC1111's; larger explicit ones are still accepted.
MAX_SEED = 2**63 - 1
# AUTOMATIC1111's bound of the noise multiplier ``eta`` (a sampler option of DDIM and the ancestral samplers).
MAX_ETA = 10.0
# A1111 requests and infotexts carry these whatever the sampler; a sampler without them ignores them, as in A1111.
OPTIONS_ANY_SAMPLER_MAY_IGNORE = ("eta",)

# AUTOMATIC1111's img2img resize modes (index == the value its API takes).
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
# AUTOMATIC1111's "Masked content" choices (index == ``inpainting_fill``).
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
# AUTOMATIC1111's "Mask mode" choices (index == ``inpainting_mask_invert``).
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


@dataclass
class GenerationRequest:
    """A text-to-image request. ``width``/``height`` None means the model's native size.

    Image ``i`` of the whole job (over ``n_iter`` batches of ``batch_size``) uses seed
    ``seed + i``; ``seed=-1`` picks a random seed once per job.
    """

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    # Sampler options by name (``Sampler.options`` lists those a sampler takes), e.g. ``{"eta": 0.5}``.
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # VAE choice (issue 15): "Automatic", "None" or a VAE file's name (A1111's ``sd_vae`` in
    # ``override_settings``); None: the app's "SD VAE" setting when submitted. The service checks the name.
    sd_vae: str | None = None
    # Variation seeds (AUTOMATIC1111's): with ``subseed_strength`` > 0 every image keeps ``seed`` and image i
    # is pulled towards ``subseed + i`` (-1: random, once per job); a resize-from size (both > 0) keeps the
    # noise of that size centred in the image.
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    # A script (X/Y/Z plot, prompts from file) planned by ``webui.scripts``: the job runs its cells instead.
    script: ScriptPlan | None = None
    # Hires fix (webui/pipeline/hires.py): None is off, A1111's ``enable_hr`` false. txt2img only.
    hires: HiresRequest | None = None
    # Speed-ups that trade a little quality (issue 19, webui/pipeline/speedups.py), A1111's option names; None
    # takes the app's setting when submitted. Token merging ratio 0-0.75 (0: off); DeepCache interval 1 is off.
    token_merging_ratio: float | None = None
    token_merging_ratio_hr: float | None = None
    deepcache_interval: int | None = None
    deepcache_branch: int | None = None

    @property
    def mode(self) -> str:
        """The outputs sub-folder and infotext flavour: ``txt2img`` or ``img2img``."""
        return "txt2img"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    def validate(self) -> None:
        """Check every field (not the sampler and schedule names); raise :class:`InvalidRequest` naming the
        first bad one. Changes nothing: :func:`resolve_request` makes the resolved copy."""
        self._checked_fields()

    def _checked_fields(self) -> dict[str, Any]:
        """The fields by name, checked; whole-number floats (``4.0`` from JSON or a slider) become ints."""
        texts = ("prompt", "negative_prompt", "sampler_name", "scheduler")
        values: dict[str, Any] = {name: _text(name, getattr(self, name)) for name in texts}
        values["steps"] = _whole("steps", self.steps, 1, MAX_STEPS)
        values["cfg_scale"] = _number("cfg_scale", self.cfg_scale, 0.0, MAX_CFG_SCALE)
        for name in ("width", "height"):
            values[name] = None if getattr(self, name) is None else _size(name, getattr(self, name))
        values["seed"] = _whole("seed", self.seed, -1, MAX_SEED)
        values["batch_size"] = _whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        values["n_iter"] = _whole("n_iter", self.n_iter, 1, MAX_N_ITER)
        if values["seed"] >= 0 and values["seed"] + values["batch_size"] * values["n_iter"] - 1 > MAX_SEED:
            raise InvalidRequest("seed", f"seed + image count must stay below {MAX_SEED}")
        values["clip_skip"] = _whole("clip_skip", self.clip_skip, 1, MAX_CLIP_SKIP)
        if not isinstance(self.sampler_options, Mapping):
            raise InvalidRequest("sampler_options", "must be a mapping of option name to value")
        values["sampler_options"] = dict(self.sampler_options)
        values["sd_vae"] = None if self.sd_vae is None else _text("sd_vae", self.sd_vae)
        values.update(_checked_variation(self, values["batch_size"] * values["n_iter"]))
        values["hires"] = self.hires
        values["speedups"] = Speedups.checked({name: getattr(self, name) for name in SPEEDUP_FIELDS})  # issue 19
        return values


@dataclass
class Img2ImgRequest(GenerationRequest):
    """Image-to-image, and inpainting when ``mask`` is given (white = repaint, A1111 convention).

    ``resize_mode`` indexes :data:`RESIZE_MODES`; ``inpainting_fill`` indexes
    :data:`INPAINTING_FILLS`; ``inpainting_mask_invert`` 1 repaints the black part instead.
    A mask of another size than the init image is resized to it.
    """

    init_images: list[Image.Image] = field(default_factory=list)
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: Image.Image | None = None
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpainting_mask_invert: int = 0

    @property
    def mode(self) -> str:
        return "img2img"

    def _checked_fields(self) -> dict[str, Any]:
        values = super()._checked_fields()
        if self.hires is not None:
            raise InvalidRequest("enable_hr", "hires fix is a txt2img feature; img2img takes denoising_strength")
        if not isinstance(self.init_images, (list, tuple)) or not self.init_images:
            raise InvalidRequest("init_images", "needs at least one image")
        for i, image in enumerate(self.init_images):
            if not isinstance(image, Image.Image):
                raise InvalidRequest("init_images", f"item {i} is not an image ({type(image).__name__})")
            if image.width < 1 or image.height < 1:
                raise InvalidRequest("init_images", f"item {i} is empty")
            _check_readable(image, "init_images", f"item {i}")
        values["init_images"] = tuple(self.init_images)
        values["denoising_strength"] = _number("denoising_strength", self.denoising_strength, 0.0, 1.0)
        values["resize_mode"] = _whole("resize_mode", self.resize_mode, 0, len(RESIZE_MODES) - 1)
        if self.mask is not None:
            if not isinstance(self.mask, Image.Image):
                raise InvalidRequest("mask", f"is not an image ({type(self.mask).__name__})")
            _check_readable(self.mask, "mask", "the mask")
        values["mask"] = self.mask
        values["mask_blur"] = _whole("mask_blur", self.mask_blur, 0, 64)
        values["inpainting_fill"] = _whole("inpainting_fill", self.inpainting_fill, 0, len(INPAINTING_FILLS) - 1)
        values["inpainting_mask_invert"] = _whole("inpainting_mask_invert", self.inpainting_mask_invert, 0, 1)
        return values


@dataclass(frozen=True)
class ResolvedImg2Img:
    """The img2img part of a :class:`ResolvedRequest` (fields as in :class:`Img2ImgRequest`)."""

    init_images: tuple[Image.Image, ...]
    denoising_strength: float
    resize_mode: int
    mask: Image.Image | None
    mask_blur: int
    inpainting_fill: int
    inpainting_mask_invert: int


@dataclass(frozen=True)
class ResolvedRequest:
    """A checked request with nothing left open: what generation, infotexts and results read.

    Made only by :func:`resolve_request`. ``width``/``height`` and ``seed`` are concrete,
    ``sampler`` is the registered :class:`~webui.sampling.Sampler`, ``scheduler`` the schedule's
    canonical name, ``sampler_options`` every option of the sampler (its defaults updated with the
    request's, converted to the defaults' types) and ``given_options`` the names the request set
    (the infotext lists those). ``img2img`` is None for txt2img.
    """

    prompt: str
    negative_prompt: str
    sampler: Sampler
    scheduler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    batch_size: int
    n_iter: int
    clip_skip: int
    sampler_options: Mapping[str, Any]
    given_options: tuple[str, ...] = ()
    img2img: ResolvedImg2Img | None = None
    # LoRA (issue 15): the <lora:...> tags of prompt and negative prompt, resolved to files (merged for the job).
    loras: tuple[LoraUse, ...] = ()
    sd_vae: str = "Automatic"  # as in GenerationRequest, never None (issue 15)
    # Samplers and schedules (#18): ``scheduler`` as ``sample()`` takes it (a plugin's ScheduleType or a core name).
    schedule_type: str | ScheduleType = ""
    # Variation seeds: ``subseed`` is concrete when ``subseed_strength`` > 0 (else -1); ``seed_resize_from``
    # is ``(width, height)`` or None.
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    # A script's plan with every cell resolved (this request is its first cell's, for the queue's display).
    script: ScriptPlan | None = None
    hires: ResolvedHires | None = None  # hires fix's second pass (webui/pipeline/hires.py)
    speedups: Speedups = Speedups()  # token merging and DeepCache (issue 19), off by default

    @property
    def sampler_name(self) -> str:
        return self.sampler.name

    @property
    def mode(self) -> str:
        """The outputs sub-folder and infotext flavour: ``txt2img`` or ``img2img``."""
        return "txt2img" if self.img2img is None else "img2img"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def sampling_steps(self) -> int:
        """Steps sampled per batch: all of them (and the hires pass's) for txt2img, those from ``img2img_start`` on
        for img2img."""
        if self.img2img is None:
            return self.steps + (self.hires.sampling_steps if self.hires is not None else 0)
        return self.steps - img2img_start(self.steps, self.img2img.denoising_strength)

    def seeds(self) -> list[int]:
        """Seed of every image of the job, in order: ``seed + i``; with variation seeds all ``seed`` (A1111)."""
        if self.subseed_strength != 0:
            return [self.seed] * self.total_images
        return [self.seed + i for i in range(self.total_images)]

    def subseeds(self) -> list[int]:
        """Variation seed of every image of the job: ``subseed + i``."""
        return [self.subseed + i for i in range(self.total_images)]


def resolve_request(
    request: GenerationRequest,
    samplers: SamplerRegistry,
    native_size: tuple[int, int],
    upscalers: UpscalerRegistry | None = None,
    *,
    loras: LoraLibrary | None = None,
) -> ResolvedRequest:
    """Check ``request`` and decide what it leaves open; ``request`` itself is not changed.

    Args:
        request: a :class:`GenerationRequest` or :class:`Img2ImgRequest`.
        samplers: where ``sampler_name`` (a name or alias, any case) is looked up.
        native_size: ``(width, height)`` for a width or height of None: the model's native size.
        loras: the LoRA folder that ``<lora:NAME:...>`` tags are looked up in (None: no LoRA can be used).
        upscalers: where a hires fix's image upscaler is looked up (None: the built-in ones).

    Returns:
        the :class:`ResolvedRequest`: native size filled in, ``seed=-1`` replaced by a random seed
        (drawn here, once), the sampler and schedule looked up, the sampler options merged with its defaults.

    Raises:
        InvalidRequest: naming the first bad field (sampler options that the sampler does not take
            included, except ``eta``, which a sampler without one ignores as in A1111).
    """
    if request.script is not None:  # X/Y/Z plot or prompt list: every cell checked and resolved now
        return _resolve_script(request.script, samplers, native_size, upscalers, loras)
    values = request._checked_fields()
    try:
        sampler = samplers.get(values["sampler_name"])
    except (KeyError, ValueError) as err:
        raise InvalidRequest("sampler_name", str(err)) from None
    try:
        schedule_type = samplers.schedule(values["scheduler"])
    except ValueError as err:
        raise InvalidRequest("scheduler", str(err)) from None
    schedule = schedule_type.name if isinstance(schedule_type, ScheduleType) else schedule_type
    if not sampler.supports(schedule):
        raise InvalidRequest(
            "scheduler", f"sampler {sampler.name!r} supports {', '.join(sampler.schedules or ())}, not {schedule!r}"
        )
    given = _given_options(sampler, values["sampler_options"])
    try:
        options = sampler_options(sampler, given)
    except ValueError as err:
        raise InvalidRequest("sampler_options", str(err)) from None
    for name in given:
        _check_option(name, options[name])
    width = _size("width", native_size[0]) if values["width"] is None else values["width"]
    height = _size("height", native_size[1]) if values["height"] is None else values["height"]
    img2img = None
    if isinstance(request, Img2ImgRequest):
        img2img = ResolvedImg2Img(**{f.name: values[f.name] for f in fields(ResolvedImg2Img)})
    resolved = ResolvedRequest(
        prompt=values["prompt"],
        negative_prompt=values["negative_prompt"],
        sampler=sampler,
        scheduler=schedule,
        steps=values["steps"],
        cfg_scale=values["cfg_scale"],
        width=width,
        height=height,
        seed=resolve_seed(values["seed"]),
        batch_size=values["batch_size"],
        n_iter=values["n_iter"],
        clip_skip=values["clip_skip"],
        sampler_options=MappingProxyType(options),
        given_options=tuple(given),
        img2img=img2img,
        loras=resolve_loras(loras, values["prompt"], values["negative_prompt"]),
        sd_vae=values["sd_vae"] or "Automatic",
        schedule_type=schedule_type,
        subseed=resolve_seed(values["subseed"]) if values["subseed_strength"] != 0 else -1,
        subseed_strength=values["subseed_strength"],
        seed_resize_from=values["seed_resize_from"],
        speedups=values["speedups"],
    )
    if values["hires"] is not None:
        return replace(resolved, hires=resolve_hires(values["hires"], resolved, samplers, upscalers))
    return resolved


def resolve_loras(library: LoraLibrary | None, prompt: str, negative_prompt: str) -> tuple[LoraUse, ...]:
    """The LoRAs the prompts' ``<lora:...>`` tags name; an unknown name or an unusable file is a bad ``prompt``."""
    from webui.extra_networks.lora_library import LORA_TAG_KINDS, LoraNotFound
    from webui.extra_networks.prompt_tags import parse_tags

    try:
        if library is None:
            tags = [t for text in (prompt, negative_prompt) for t in parse_tags(text)[1] if t.kind in LORA_TAG_KINDS]
            if tags:
                raise LoraNotFound(f"unknown LoRA {tags[0].items[0]!r}: this app has no LoRA folder")
            return ()
        return library.resolve(prompt, negative_prompt)
    except (LookupError, ValueError) as err:  # LoraNotFound, LoraTagError, LoraFileError
        raise InvalidRequest("prompt", str(err)) from None


def _resolve_script(
    plan: ScriptPlan,
    samplers: SamplerRegistry,
    native_size: tuple[int, int],
    upscalers: UpscalerRegistry | None,
    loras: LoraLibrary | None,
) -> ResolvedRequest:
    if not plan.cells:
        raise InvalidRequest("script_args", f"script {plan.name!r} has nothing to generate")
    cells = tuple(
        replace(c, request=resolve_request(c.request, samplers, native_size, upscalers, loras=loras))
        for c in plan.cells
    )
    return replace(cells[plan.order[0]].request, script=replace(plan, cells=cells))


def _checked_variation(request: GenerationRequest, images: int) -> dict[str, Any]:
    """The variation-seed fields, checked: ``seed_resize_from`` is ``(w, h)`` when both are > 0, else None."""
    values: dict[str, Any] = {
        "subseed": _whole("subseed", request.subseed, -1, MAX_SEED),
        "subseed_strength": _number("subseed_strength", request.subseed_strength, 0.0, 1.0),
    }
    if values["subseed"] >= 0 and values["subseed"] + images - 1 > MAX_SEED:
        raise InvalidRequest("subseed", f"subseed + image count must stay below {MAX_SEED}")
    w = _whole("seed_resize_from_w", request.seed_resize_from_w, -1, MAX_SIZE)
    h = _whole("seed_resize_from_h", request.seed_resize_from_h, -1, MAX_SIZE)
    for name, size in (("seed_resize_from_w", w), ("seed_resize_from_h", h)):
        if 0 < size < SIZE_MULTIPLE:
            raise InvalidRequest(name, f"must be at least {SIZE_MULTIPLE} (or 0 / -1 for off), got {size}")
    values["seed_resize_from"] = (w, h) if w > 0 and h > 0 else None
    return values


def _given_options(sampler: Sampler, options: dict[str, Any]) -> dict[str, Any]:
    """The options the request sets (None means "the default"); raises for one the sampler does not take."""
    given = {name: value for name, value in options.items() if value is not None}
    unknown = set(given) - set(sampler.options) - set(OPTIONS_ANY_SAMPLER_MAY_IGNORE)
    if unknown:
        raise InvalidRequest(
            "sampler_options",
            f"{', '.join(sorted(unknown))} not options of {sampler.name!r} (it takes: "
            f"{', '.join(sampler.options) or 'none'})",
        )
    return {name: value for name, value in given.items() if name in sampler.options}


def _check_option(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value}")
    if name == "eta" and not 0.0 <= value <= MAX_ETA:
        raise InvalidRequest(name, f"must be between 0 and {MAX_ETA:g}, got {value:g}")


@dataclass
class GenerationResult:
    """What one request produced; ``interrupted`` is True when it stopped early (images kept)."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    request: ResolvedRequest | None = None
    subseeds: list[int] = field(default_factory=list)  # per image, only with variation seeds
    # Per image when the images have different prompts (a prompt list, issue 17); empty: the request's.
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)

    model_name: str | None = None
    model_hash: str | None = None

    @property
    def info(self) -> dict[str, Any]:
        """AUTOMATIC1111's ``info`` object for this result (the API returns it JSON-encoded)."""
        req = self.request
        if req is None:
            raise ValueError("a result without its request has no info")
        count = len(self.images)
        return {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "all_prompts": list(self.prompts) if self.prompts else [req.prompt] * count,
            "all_negative_prompts": list(self.negative_prompts)
            if self.negative_prompts
            else [req.negative_prompt] * count,
            "seed": self.seeds[0] if self.seeds else req.seed,
            "all_seeds": list(self.seeds),
            "subseed": self.subseeds[0] if self.subseeds else req.subseed,
            "all_subseeds": list(self.subseeds) if self.subseeds else [-1] * count,
            "subseed_strength": req.subseed_strength,
            "seed_resize_from_w": req.seed_resize_from[0] if req.seed_resize_from else -1,
            "seed_resize_from_h": req.seed_resize_from[1] if req.seed_resize_from else -1,
            "width": req.width,
            "height": req.height,
            "sampler_name": req.sampler_name,
            "scheduler": req.scheduler,
            "steps": req.steps,
            "cfg_scale": req.cfg_scale,
            "batch_size": req.batch_size,
            "n_iter": req.n_iter,
            "clip_skip": req.clip_skip,
            "denoising_strength": req.img2img.denoising_strength if req.img2img is not None else None,
            "sd_model_name": self.model_name,
            "sd_model_hash": self.model_hash,
            "index_of_first_image": 0,
            "infotexts": list(self.infotexts),
            "interrupted": self.interrupted,
        }


def _check_readable(image: Image.Image, name: str, what: str) -> None:
    """Decode a lazily opened image now, so that a truncated file is a bad request, not a crash later."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidRequest(name, f"{what} cannot be decoded: {err}") from None


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be text, got {type(value).__name__}")
    return value


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int (a whole-number float converted), within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
            raise InvalidRequest(name, f"must be a whole number, got {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low:g} and {high:g}, got {value:g}")
    return value


def _size(name: str, value: Any) -> int:
    """A width or height: whole pixels within ``[MIN_SIZE, MAX_SIZE]``, a multiple of ``SIZE_MULTIPLE``."""
    size = _whole(name, value, MIN_SIZE, MAX_SIZE)
    if size % SIZE_MULTIPLE:
        raise InvalidRequest(name, f"must be a multiple of {SIZE_MULTIPLE}, got {size}")
    return size
