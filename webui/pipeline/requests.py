"""Typed generation requests and results, with AUTOMATIC1111's field names and defaults.

A request is plain data: the UI builds one from its widgets, the API from JSON, and
:func:`webui.pipeline.infotext.request_from_infotext` from a PNG's ``parameters`` chunk.
:meth:`GenerationRequest.validate` checks every field and raises :class:`InvalidRequest`
naming the first bad one before anything is computed or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.seeds import resolve_seed

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 150
MAX_CFG_SCALE = 30.0
MAX_BATCH_SIZE = 8
MAX_N_ITER = 100
MAX_CLIP_SKIP = 12
# Random seeds are below 2**32 like AUTOMATIC1111's; larger explicit ones are still accepted.
MAX_SEED = 2**63 - 1

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
    # Sampler noise multiplier (ancestral/DDIM eta); None = the sampler's own default.
    eta: float | None = None
    # Extra sampler options by name (``Sampler.options`` lists those a sampler accepts).
    sampler_options: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """The outputs sub-folder and infotext flavour: ``txt2img`` or ``img2img``."""
        return "txt2img"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter

    def with_size(self, native_size: tuple[int, int]) -> GenerationRequest:
        """A copy whose missing width/height are the model's native ``(width, height)``."""
        width, height = native_size
        return replace(
            self, width=width if self.width is None else self.width,
            height=height if self.height is None else self.height,
        )

    def with_seed(self) -> GenerationRequest:
        """A copy with ``seed=-1`` replaced by a concrete random seed."""
        return self if self.seed != -1 else replace(self, seed=resolve_seed(self.seed))

    def seeds(self) -> list[int]:
        """Seed of every image of the job, in order (request seed must be resolved)."""
        return [self.seed + i for i in range(self.total_images)]

    def validate(self) -> GenerationRequest:
        """Check every field; raise :class:`InvalidRequest` naming the first bad one. Returns self."""
        _check_str(self, "prompt")
        _check_str(self, "negative_prompt")
        _check_str(self, "sampler_name")
        _check_str(self, "scheduler")
        _check_int(self, "steps", 1, MAX_STEPS)
        _check_float(self, "cfg_scale", 0.0, MAX_CFG_SCALE)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            _check_int(self, name, MIN_SIZE, MAX_SIZE)
            if value % SIZE_MULTIPLE:
                raise InvalidRequest(name, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
        _check_int(self, "seed", -1, MAX_SEED)
        _check_int(self, "batch_size", 1, MAX_BATCH_SIZE)
        _check_int(self, "n_iter", 1, MAX_N_ITER)
        if self.seed >= 0 and self.seed + self.total_images - 1 > MAX_SEED:
            raise InvalidRequest("seed", f"seed + image count must stay below {MAX_SEED}")
        _check_int(self, "clip_skip", 1, MAX_CLIP_SKIP)
        if self.eta is not None:
            _check_float(self, "eta", 0.0, 10.0)
        if not isinstance(self.sampler_options, dict):
            raise InvalidRequest("sampler_options", "must be a mapping of option name to value")
        return self


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

    def validate(self) -> Img2ImgRequest:
        super().validate()
        if not isinstance(self.init_images, (list, tuple)) or not self.init_images:
            raise InvalidRequest("init_images", "needs at least one image")
        for i, image in enumerate(self.init_images):
            if not isinstance(image, Image.Image):
                raise InvalidRequest("init_images", f"item {i} is not an image ({type(image).__name__})")
            if image.width < 1 or image.height < 1:
                raise InvalidRequest("init_images", f"item {i} is empty")
            _check_readable(image, "init_images", f"item {i}")
        _check_float(self, "denoising_strength", 0.0, 1.0)
        _check_int(self, "resize_mode", 0, len(RESIZE_MODES) - 1)
        if self.mask is not None:
            if not isinstance(self.mask, Image.Image):
                raise InvalidRequest("mask", f"is not an image ({type(self.mask).__name__})")
            _check_readable(self.mask, "mask", "the mask")
        _check_int(self, "mask_blur", 0, 64)
        _check_int(self, "inpainting_fill", 0, len(INPAINTING_FILLS) - 1)
        _check_int(self, "inpainting_mask_invert", 0, 1)
        return self


@dataclass
class GenerationResult:
    """What one request produced; ``interrupted`` is True when it stopped early (images kept)."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    request: GenerationRequest | None = None

    model_name: str | None = None
    model_hash: str | None = None

    @property
    def info(self) -> dict[str, Any]:
        """AUTOMATIC1111's ``info`` object for this result (the API returns it JSON-encoded)."""
        req = self.request if self.request is not None else GenerationRequest()
        count = len(self.images)
        return {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "all_prompts": [req.prompt] * count,
            "all_negative_prompts": [req.negative_prompt] * count,
            "seed": self.seeds[0] if self.seeds else req.seed,
            "all_seeds": list(self.seeds),
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "width": req.width,
            "height": req.height,
            "sampler_name": req.sampler_name,
            "scheduler": req.scheduler,
            "steps": req.steps,
            "cfg_scale": req.cfg_scale,
            "batch_size": req.batch_size,
            "n_iter": req.n_iter,
            "clip_skip": req.clip_skip,
            "denoising_strength": getattr(req, "denoising_strength", None),
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


def _check_str(request: Any, name: str) -> None:
    if not isinstance(getattr(request, name), str):
        raise InvalidRequest(name, f"must be text, got {type(getattr(request, name)).__name__}")


def _check_int(request: Any, name: str, low: int, high: int) -> None:
    value = getattr(request, name)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
            setattr(request, name, value)
        else:
            raise InvalidRequest(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")


def _check_float(request: Any, name: str, low: float, high: float) -> None:
    value = getattr(request, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low:g} and {high:g}, got {value:g}")
