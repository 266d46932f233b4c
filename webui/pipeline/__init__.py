"""Text-to-image, image-to-image and inpainting on a loaded Stable Diffusion 1.x model.

No UI here. A request (:class:`GenerationRequest`, :class:`Img2ImgRequest`) is checked and completed
once by :func:`resolve_request` into a :class:`ResolvedRequest`; :func:`generate` takes that and returns
a :class:`GenerationResult` (images, seeds, infotexts, paths). Progress goes out through a callback and
interruption comes in through :class:`GenerationControl`. :mod:`webui.service` queues requests on top of this.
"""

from webui.pipeline.errors import InvalidRequest, OutOfMemory, PipelineError
from webui.pipeline.generation import GenerationControl, Progress, generate, native_size
from webui.pipeline.infotext import format_infotext, parse_infotext, request_from_infotext
from webui.pipeline.requests import (
    INPAINTING_FILLS,
    MASK_MODES,
    RESIZE_MODES,
    GenerationRequest,
    GenerationResult,
    Img2ImgRequest,
    ResolvedImg2Img,
    ResolvedRequest,
    resolve_request,
)

__all__ = [
    "INPAINTING_FILLS",
    "MASK_MODES",
    "RESIZE_MODES",
    "GenerationControl",
    "GenerationRequest",
    "GenerationResult",
    "Img2ImgRequest",
    "InvalidRequest",
    "OutOfMemory",
    "PipelineError",
    "Progress",
    "ResolvedImg2Img",
    "ResolvedRequest",
    "format_infotext",
    "generate",
    "native_size",
    "parse_infotext",
    "request_from_infotext",
    "resolve_request",
]
