"""Text-to-image, image-to-image and inpainting on a loaded Stable Diffusion 1.x model.

No UI here: :func:`webui.pipeline.generate` takes a typed request and returns images, infotexts and paths;
progress goes out through a callback and interruption comes in through
:class:`GenerationControl`. :mod:`webui.service` queues requests on top of this.
"""

from webui.pipeline.errors import InvalidRequest, OutOfMemory, PipelineError
from webui.pipeline.generation import GenerationControl, Progress, check_request, generate
from webui.pipeline.infotext import format_infotext, parse_infotext, request_from_infotext
from webui.pipeline.requests import (
    INPAINTING_FILLS,
    MASK_MODES,
    RESIZE_MODES,
    GenerationRequest,
    GenerationResult,
    Img2ImgRequest,
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
    "check_request",
    "format_infotext",
    "generate",
    "parse_infotext",
    "request_from_infotext",
]
