"""Image upscalers: the built-in ``None``, ``Lanczos`` and ``Nearest``, and model upscalers (ESRGAN, Real-ESRGAN,
SwinIR, DAT and every other architecture that the optional ``spandrel`` package recognises) from a folder.

No UI here. :class:`UpscalerRegistry` lists them by A1111's names; :func:`upscale_to` brings an image to an exact
size with one of them (hires fix and Extras both use it); :mod:`webui.upscalers.postprocess` is the Extras tab's
and the API's ``extra-single-image`` core. ``spandrel`` is imported only when a model upscaler is used, so the
base install needs neither it nor torchvision.
"""

from webui.upscalers.base import (
    MAX_UPSCALE_PIXELS,
    MAX_UPSCALE_SIDE,
    Upscaler,
    UpscalerError,
    UpscalerUnavailable,
    check_target_size,
    upscale_to,
)
from webui.upscalers.registry import DEFAULT_UPSCALER_DIR, UpscalerRegistry

__all__ = [
    "DEFAULT_UPSCALER_DIR",
    "MAX_UPSCALE_PIXELS",
    "MAX_UPSCALE_SIDE",
    "Upscaler",
    "UpscalerError",
    "UpscalerRegistry",
    "UpscalerUnavailable",
    "check_target_size",
    "upscale_to",
]
