"""How much one API request may ask for.

The defaults are the ranges of AUTOMATIC1111's UI sliders, so that any request its UI could make is accepted;
a server on a small machine (or a test) lowers them. A value outside them is answered with 422 naming the
field before anything is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Per-request limits of the REST API.

    Args:
        max_batch_size: images per batch (``batch_size``), A1111's slider goes to 8.
        max_n_iter: batches per request (``n_iter``, "Batch count"), A1111's slider goes to 100.
        max_steps: sampling ``steps``.
        max_width / max_height: image size in pixels (A1111: 2048).
        max_cfg_scale: ``cfg_scale`` (A1111: 30).
        max_prompt_chars: length of ``prompt`` and ``negative_prompt`` each.
        max_image_pixels: width x height of an uploaded image (init image, mask, png-info), checked from the
            header before it is decoded.
        max_body_bytes: request body; larger ones are refused with 413 from ``Content-Length`` or, for a
            streamed body, as soon as the count passes it.
    """

    max_batch_size: int = 8
    max_n_iter: int = 100
    max_steps: int = 150
    max_width: int = 2048
    max_height: int = 2048
    max_cfg_scale: float = 30.0
    max_prompt_chars: int = 20_000
    max_image_pixels: int = 4096 * 4096
    max_body_bytes: int = 50 * MIB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"ApiLimits.{name} must be positive, got {value!r}")
