"""Text-to-image, image-to-image and inpainting on a loaded Stable Diffusion 1.x model.

No UI here: :func:`generate` takes a typed request and returns images, infotexts and paths;
progress goes out through a callback and interruption comes in through
:class:`GenerationControl`. :mod:`webui.service` queues requests on top of this.
"""

from webui.pipeline.errors import InvalidRequest, OutOfMemory, PipelineError
from webui.pipeline.requests import (
    INPAINTING_FILLS,
    RESIZE_MODES,
    GenerationRequest,
    GenerationResult,
    Img2ImgRequest,
)

__all__ = [
    "INPAINTING_FILLS",
    "RESIZE_MODES",
    "GenerationRequest",
    "GenerationResult",
    "Img2ImgRequest",
    "InvalidRequest",
    "OutOfMemory",
    "PipelineError",
]
