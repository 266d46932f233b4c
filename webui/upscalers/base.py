"""What an upscaler is, the built-in ones, and bringing an image to an exact size with one of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

# Largest image an upscaler may produce (hires fix, Extras, the API): 4096 px a side and 16 megapixels.
MAX_UPSCALE_SIDE = 4096
MAX_UPSCALE_PIXELS = 16 * 2**20
# A model upscaler runs at most this many times to reach a target (x4 model: 64x), as AUTOMATIC1111.
MAX_MODEL_PASSES = 3

CancelCheck = Callable[[], bool]


class UpscalerError(RuntimeError):
    """An upscaler could not run (a file spandrel cannot identify, a broken file); the message names the file."""


class UpscalerUnavailable(UpscalerError):
    """A listed model upscaler whose dependency is missing (``spandrel``); the message says how to install it."""


class Upscaler(Protocol):
    """One entry of the upscaler list (AUTOMATIC1111's ``UpscalerData``)."""

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> float | None:
        """The model's native factor (4 for a x4 ESRGAN); None for resamplers, which take any factor."""
        ...

    @property
    def model_path(self) -> Path | None: ...

    def upscale_once(self, image: Image.Image, width: int, height: int, cancel: CancelCheck | None) -> Image.Image:
        """One pass towards ``width`` x ``height``: a resampler lands on it, a model gives its own factor."""
        ...


@dataclass(frozen=True)
class Resampler:
    """A PIL resampling filter as an upscaler (A1111's ``Lanczos`` and ``Nearest``); ``filter`` None is ``None``."""

    name: str
    filter: Image.Resampling | None

    scale = None
    model_path = None

    def upscale_once(self, image: Image.Image, width: int, height: int, cancel: CancelCheck | None) -> Image.Image:
        if self.filter is None or image.size == (width, height):
            return image
        return image.resize((width, height), self.filter)


NONE = Resampler("None", None)
LANCZOS = Resampler("Lanczos", Image.Resampling.LANCZOS)
NEAREST = Resampler("Nearest", Image.Resampling.NEAREST)
BUILTIN_UPSCALERS: tuple[Resampler, ...] = (NONE, LANCZOS, NEAREST)


def check_target_size(width: int, height: int) -> str | None:
    """Why an upscaler may not produce ``width`` x ``height`` (None when it may)."""
    if width < 1 or height < 1:
        return f"the target size {width}x{height} is empty"
    if max(width, height) > MAX_UPSCALE_SIDE:
        return f"the target size {width}x{height} is over {MAX_UPSCALE_SIDE} px a side"
    if width * height > MAX_UPSCALE_PIXELS:
        return f"the target size {width}x{height} is over {MAX_UPSCALE_PIXELS // 2**20} megapixels"
    return None


def upscale_to(
    upscaler: Upscaler, image: Image.Image, width: int, height: int, cancel: CancelCheck | None = None
) -> Image.Image:
    """``image`` at exactly ``width`` x ``height`` through ``upscaler``.

    A model upscaler runs (up to :data:`MAX_MODEL_PASSES` times) until the image covers the target, and the
    result is brought to the exact size with Lanczos, as AUTOMATIC1111's ``Upscaler.upscale``; the ``None``
    upscaler resizes with Lanczos too (A1111's ``resize_image`` does the same after a ``None`` upscaler).
    """
    reason = check_target_size(width, height)
    if reason is not None:
        raise ValueError(reason)
    image = image.convert("RGB")
    if upscaler.scale is not None:
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= width and image.height >= height:
                break
            before = image.size
            image = upscaler.upscale_once(image, width, height, cancel)
            if image.size == before:
                break
    else:
        image = upscaler.upscale_once(image, width, height, cancel)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
