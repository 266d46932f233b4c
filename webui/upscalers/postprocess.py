"""The Extras tab's upscaling (AUTOMATIC1111's ``scripts/postprocessing_upscale.py``), for the UI and the API.

Resize mode 0 scales by ``upscaling_resize``; mode 1 scales so that the image covers ``upscaling_resize_w`` x
``upscaling_resize_h`` and, with ``upscaling_crop``, crops the centre to exactly that size. Upscaler 2, when not
``None`` and visible, upscales the same source and is blended in: ``Image.blend(first, second, visibility)``.
The PNG's ``parameters`` text holds A1111's ``Postprocess ...`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from webui.pipeline.errors import InvalidRequest
from webui.upscalers.base import CancelCheck, check_target_size, upscale_to
from webui.upscalers.registry import UpscalerRegistry

RESIZE_BY, RESIZE_TO = 0, 1
MAX_RESIZE = 16.0


@dataclass(frozen=True)
class ExtrasRequest:
    """A1111's ``extra-single-image`` fields (face restoration is not supported)."""

    resize_mode: int = RESIZE_BY
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0


def target_size(image_size: tuple[int, int], request: ExtrasRequest) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``(upscaled size, crop size or None)`` of an image of ``image_size``.

    As A1111's ``Upscaler.upscale``, each side of the upscaled image is ``side * scale`` rounded down to a multiple
    of 8 (x3 on a 20 px side gives 56, not 60), in both modes; "Scale to" takes the scale that covers the target.
    """
    w, h = image_size
    if request.resize_mode == RESIZE_TO:
        scale = max(request.upscaling_resize_w / w, request.upscaling_resize_h / h)
        crop = (request.upscaling_resize_w, request.upscaling_resize_h) if request.upscaling_crop else None
    else:
        scale, crop = request.upscaling_resize, None
    return (_multiple_of_8(w * scale), _multiple_of_8(h * scale)), crop


def check_extras(request: ExtrasRequest, registry: UpscalerRegistry, sizes: list[tuple[int, int]]) -> None:
    """InvalidRequest naming the first bad field: modes, factors, upscaler names, a target over the limits."""
    if request.resize_mode not in (RESIZE_BY, RESIZE_TO):
        raise InvalidRequest("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {request.resize_mode}")
    if not 0 < request.upscaling_resize <= MAX_RESIZE:
        raise InvalidRequest("upscaling_resize", f"must be above 0 and at most {MAX_RESIZE:g}")
    if request.resize_mode == RESIZE_TO and min(request.upscaling_resize_w, request.upscaling_resize_h) < 1:
        raise InvalidRequest("upscaling_resize_w", "the target width and height must be at least 1")
    if not 0.0 <= request.extras_upscaler_2_visibility <= 1.0:
        raise InvalidRequest("extras_upscaler_2_visibility", "must be between 0 and 1")
    for name in ("upscaler_1", "upscaler_2"):
        try:
            upscaler = registry.get(getattr(request, name))
        except KeyError as err:
            raise InvalidRequest(name, str(err.args[0])) from None
        reason = registry.unavailable_reason(upscaler)
        if reason is not None:
            raise InvalidRequest(name, f"{upscaler.name}: {reason}")
    for size in sizes:
        upscaled, crop = target_size(size, request)
        reason = check_target_size(*upscaled) or (check_target_size(*crop) if crop else None)
        if reason is not None:
            field = "upscaling_resize" if request.resize_mode == RESIZE_BY else "upscaling_resize_w"
            raise InvalidRequest(field, f"{reason} (from a {size[0]}x{size[1]} image)")


def postprocess(
    image: Image.Image, request: ExtrasRequest, registry: UpscalerRegistry, cancel: CancelCheck | None = None
) -> tuple[Image.Image, dict[str, str]]:
    """One image upscaled as ``request`` says, and its ``Postprocess ...`` parameters (checked beforehand)."""
    source = image.convert("RGB")
    (width, height), crop = target_size(source.size, request)
    params: dict[str, str] = {}
    if request.resize_mode == RESIZE_TO:
        params["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
    else:
        params["Postprocess upscale by"] = _number(request.upscaling_resize)
    first = registry.get(request.upscaler_1)
    result = upscale_to(first, source, width, height, cancel)
    params["Postprocess upscaler"] = first.name
    second = registry.get(request.upscaler_2)
    if second.name != "None" and request.extras_upscaler_2_visibility > 0:
        blended = upscale_to(second, source, width, height, cancel)
        result = Image.blend(result, blended, request.extras_upscaler_2_visibility)
        params["Postprocess upscaler 2"] = second.name
        params["Postprocess upscaler 2 visibility"] = _number(request.extras_upscaler_2_visibility)
    if crop is not None and result.size != crop:
        cropped = Image.new("RGB", crop)
        cropped.paste(result, box=(crop[0] // 2 - result.width // 2, crop[1] // 2 - result.height // 2))
        result = cropped
        params["Postprocess crop to"] = f"{crop[0]}x{crop[1]}"
    return result, params


def extras_infotext(params: dict[str, str], original: str | None = None) -> str:
    """The PNG text of an Extras result: the source's own ``parameters`` with the postprocess keys added to its
    last line (PNG Info still reads the generation parameters), or the keys alone."""
    from webui.pipeline.infotext import quote

    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items())
    return f"{original.rstrip()}, {line}" if original else line


def run_extras(
    images: list[Image.Image], request: ExtrasRequest, registry: UpscalerRegistry, cancel: CancelCheck | None = None
) -> list[tuple[Image.Image, str]]:
    """Check, then upscale every image; ``(result, its PNG parameters text)`` each. Raises InvalidRequest."""
    from webui.pipeline.outputs import read_infotext

    if not images:
        raise InvalidRequest("image", "no image given")
    check_extras(request, registry, [image.size for image in images])
    out = []
    for image in images:
        result, params = postprocess(image, request, registry, cancel)
        out.append((result, extras_infotext(params, read_infotext(image))))
    return out


def _multiple_of_8(side: float) -> int:
    """A1111's ``int(side // 8 * 8)``; at least 8 (where A1111 would ask PIL for an empty image)."""
    return max(8, int(side // 8 * 8))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
